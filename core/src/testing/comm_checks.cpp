// Purpose: check-plugin's conformance checks of a comm/* plugin (see nnkit/testing.h): what can
// be checked in one process, where the communicator is rank 0 of 1 and every collective must
// leave its data as a one-rank job does.
#include <functional>
#include <memory>

#include "nnkit/communicator.h"
#include "nnkit/error.h"
#include "testing/harness.h"

namespace nnkit::testing {

std::vector<CheckResult> check_communicator(const Registry& registry, const PluginInfo& info,
                                            const CheckOptions& options, Backend& backend) {
  std::vector<CheckResult> rows;
  const Options opts = make_options(info, options.options);
  std::shared_ptr<Communicator> comm;
  try {
    comm = registry.create<Communicator>(info.kind, info.name,
                                         CreateArgs{opts, options.dims, &backend});
  } catch (const ConfigError& e) {
    // A communicator for another backend's memory (comm/nccl on the CPU): nothing to run here.
    rows.push_back(detail::skip_row(
        "collectives", std::string(e.what()) + " (check it with --backend of its kind)"));
    return rows;
  } catch (const std::exception& e) {
    rows.push_back(detail::fail_row("created", std::string("threw: ") + e.what()));
    return rows;
  }
  if (comm->rank() != 0 || comm->size() != 1) {
    rows.push_back(detail::skip_row(
        "collectives", "launched as rank " + std::to_string(comm->rank()) + " of " +
                           std::to_string(comm->size()) + "; run check-plugin as one process"));
    return rows;
  }
  rows.push_back(detail::pass_row("rank 0 of 1"));
  const detail::Host values = detail::random_host(12, 7, detail::name_salt(info.id()));
  const Tensor data = detail::upload(backend, values, {4, 3});
  const detail::Host stored = detail::download(backend, data);  // rounded to f32
  detail::guarded(rows, "all_reduce_sum", [&] {
    comm->all_reduce_sum(backend, data);
    rows.push_back(
        detail::compare_row("all_reduce_sum", detail::download(backend, data), stored, 0, 0));
  });
  detail::guarded(rows, "start_all_reduce_sum", [&] {
    const std::unique_ptr<PendingCollective> pending = comm->start_all_reduce_sum(backend, data);
    if (pending == nullptr) {
      rows.push_back(detail::fail_row("start_all_reduce_sum", "returned no handle"));
      return;
    }
    pending->wait();
    rows.push_back(detail::compare_row("start_all_reduce_sum + wait",
                                       detail::download(backend, data), stored, 0, 0));
  });
  detail::guarded(rows, "reduce_scatter_sum", [&] {
    const Tensor out = backend.empty({12});
    comm->reduce_scatter_sum(backend, data, out);
    rows.push_back(
        detail::compare_row("reduce_scatter_sum", detail::download(backend, out), stored, 0, 0));
  });
  detail::guarded(rows, "all_gather", [&] {
    const Tensor out = backend.empty({4, 3});
    comm->all_gather(backend, data, out);
    rows.push_back(detail::compare_row("all_gather", detail::download(backend, out), stored, 0, 0));
  });
  detail::guarded(rows, "all_to_all", [&] {
    const Tensor out = detail::upload(backend, detail::Host(15, 0.0), {5, 3});
    comm->all_to_all(backend, data, {3}, out, {3});
    detail::Host expected(stored.begin(), stored.begin() + 9);
    expected.resize(15, 0.0);
    rows.push_back(detail::compare_row("all_to_all (3 of 4 rows)", detail::download(backend, out),
                                       expected, 0, 0));
  });
  detail::guarded(rows, "broadcast, barrier, host sum", [&] {
    comm->broadcast(backend, data, 0);
    comm->barrier();
    double host[2] = {1.25, -3.0};
    comm->all_reduce_sum_host(host);
    const bool same =
        detail::download(backend, data) == stored && host[0] == 1.25 && host[1] == -3.0;
    rows.push_back(same ? detail::pass_row("broadcast, barrier, host sum")
                        : detail::fail_row("broadcast, barrier, host sum", "changed the data"));
  });
  // Arguments no rank could accept: refused with a message, not a crash or a hang.
  const auto refused = [&](const std::string& check, const std::function<void()>& call) {
    try {
      call();
      rows.push_back(detail::fail_row(check, "accepted"));
    } catch (const ShapeError&) {
      rows.push_back(detail::pass_row(check, "ShapeError"));
    } catch (const std::exception& e) {
      rows.push_back(detail::fail_row(check, std::string("threw something else: ") + e.what()));
    }
  };
  refused("refuses an i32 all_reduce_sum",
          [&] { comm->all_reduce_sum(backend, backend.empty({4}, DType::kI32)); });
  refused("refuses a broadcast from rank 1", [&] { comm->broadcast(backend, data, 1); });
  refused("refuses two all_to_all counts on one rank", [&] {
    comm->all_to_all(backend, data, {1, 1}, data, {1, 1});
  });
  return rows;
}

}  // namespace nnkit::testing
