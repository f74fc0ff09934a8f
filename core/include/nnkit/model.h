// Purpose: the transformer assembled from a RunConfig: embedding, N blocks of
// (norm -> attention -> +residual, norm -> MoE|FFN -> +residual), final norm, LM head.
// Components come from plugins chosen by the config; the embedding, the LM head, the residual
// stream and the MoE composition (router + experts) are the core's.
// Parameter names follow Hugging Face Mixtral/Llama ("model.layers.3.self_attn.q_proj.weight").
// Ownership: the Transformer owns its components and parameter tensors; it shares the Backend.
// Construction allocates nothing, so huge models can be described and counted; allocate() makes
// the parameter (and gradient) tensors, allocate_inference_only() only what inference reads.
// Thread-safety: none; one thread drives a model.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "nnkit/backend.h"
#include "nnkit/config.h"
#include "nnkit/layer.h"
#include "nnkit/registry.h"

namespace nnkit {

// Expert parallelism (parallel.expert > 1, docs/parallel.md): the block of every MoE layer's
// experts a model holds. count 1 (the default): all of them.
struct ExpertShard {
  int index = 0;  // this rank's place among the expert ranks of its group, in [0, count)
  int count = 1;  // parallel.expert
};

// One parameter of the whole model, in parameter order (Transformer::parameter_layout()).
struct ParameterPlace {
  Parameter* parameter = nullptr;  // this model's, or a descriptor (name, shape; no tensors)
                                   // of an expert another shard holds
  int shard = -1;                  // the expert shard holding it; -1 for replicated parameters
};

class NNKIT_API Transformer {
 public:
  // With shard.count > 1 the experts plugins hold experts [index E/count, (index+1) E/count)
  // (ModelDims::expert_begin/end) and the model's parameters are this shard's.
  Transformer(const RunConfig& config, const Registry& registry, std::shared_ptr<Backend> backend,
              ExpertShard shard = {});
  ~Transformer();
  Transformer(const Transformer&) = delete;
  Transformer& operator=(const Transformer&) = delete;

  const ModelConfig& config() const { return config_; }
  Backend& backend() const { return *backend_; }
  const ExpertShard& expert_shard() const { return shard_; }
  // Parameters of the whole model (every expert shard counted).
  int64_t parameter_count() const;
  // Parameters used per token: MoE layers count top_k of n_experts experts.
  int64_t active_parameter_count() const;
  // Bytes of KV cache per token of context, all layers together.
  int64_t kv_cache_bytes_per_token() const;
  double rope_base() const;

  // Allocates parameter values (f32 masters), their compute copies on a 16-bit backend, and
  // zeroed gradients when with_grads: what training and saving need.
  void allocate(bool with_grads);
  // Inference only (generate, eval, logits): a parameter with a compute copy (every parameter
  // on a bf16/fp16 backend) gets only that copy, unless its layer reads the master at inference
  // (Parameter::value_read_at_inference); on an f32 backend the masters are what computes, so
  // they are allocated. No gradients. 6.9B parameters at bf16 take 12.8 GiB instead of 38.5.
  // Weights are then written with stage_weights()/commit_weights() (init_random and
  // CheckpointStore::load do), one tensor at a time; training passes and saving are refused.
  void allocate_inference_only();
  bool allocated() const;
  // True after allocate_inference_only().
  bool inference_only() const { return inference_only_; }
  // Bytes the parameters' tensors hold (masters, compute copies and gradients that exist).
  int64_t weight_bytes();
  // Writing a parameter's weights from f32 numbers, the same way for either allocation:
  // stage_weights(p) returns the tensor to write them into ((shape) f32 on the backend: the
  // master when p has one, else a new staging tensor), and commit_weights(p, staged) rounds
  // them into the compute copy with Backend::convert, the rounding refresh_compute_copies()
  // applies, so both allocations compute with the same bits. A staging tensor is freed when
  // the caller drops it: loading holds the compute weights plus one f32 tensor at a time.
  Tensor stage_weights(Parameter& p);
  void commit_weights(Parameter& p, const Tensor& staged);
  // Normal(0, init_std) weights and 1 for norm scales. Each tensor's numbers depend only on
  // (seed, parameter name), so the init does not change when components are reordered.
  void init_random(uint64_t seed);
  // Every parameter this model holds with its full name, in a fixed order.
  std::vector<Parameter*> parameters();
  // Expert parallelism: the parameters of the experts this shard holds (empty when the
  // experts are not sharded), the subset of parameters() that other shards do not have.
  std::vector<Parameter*> sharded_expert_parameters();
  // Every parameter of the whole model in the order of an unsharded model's parameters(),
  // with the other shards' experts as descriptors: what a complete checkpoint lists.
  std::vector<ParameterPlace> parameter_layout();
  Parameter* find_parameter(const std::string& name);
  void zero_grads();

  // ---- training and evaluation ----
  // ids, targets: (B*T) host ids, batch-major; targets < 0 are ignored. Returns the mean
  // cross-entropy over non-ignored targets. With `training`, keeps what backward() needs.
  double forward_loss(const std::vector<int32_t>& ids, const std::vector<int32_t>& targets,
                      int64_t batch, int64_t seq, bool training, bool activation_checkpointing);
  // The training loop's device-resident variant: enqueues a training forward and adds
  // weight * (mean CE of this batch) to loss_sum ((1) f32 on the backend) without reading
  // anything back; backward() follows as after forward_loss.
  void forward_loss_into(const std::vector<int32_t>& ids, const std::vector<int32_t>& targets,
                         int64_t batch, int64_t seq, bool activation_checkpointing,
                         const Tensor& loss_sum, float weight);
  // The same in two halves, for CUDA Graphs: stage_batch() checks a micro-batch on the host and
  // uploads it into device tensors kept per `slot` (the same addresses every step);
  // forward_loss_staged() runs the forward on slot's batch with no host work at all, so it can be
  // recorded once and replayed. backward() follows as after forward_loss.
  void stage_batch(size_t slot, const std::vector<int32_t>& ids,
                   const std::vector<int32_t>& targets, int64_t batch, int64_t seq);
  void forward_loss_staged(size_t slot, bool activation_checkpointing, const Tensor& loss_sum,
                           float weight);
  // Non-ignored targets of the batch staged in `slot` (-1 when none is).
  int64_t staged_valid_targets(size_t slot) const;
  // True when a training step's shapes can be made independent of the data, so the step can be
  // recorded in a CUDA Graph: no MoE layer, or every router has a capacity (its padded layout
  // fixes the per-expert products; dropless routing sizes them from each step's choices).
  bool has_static_shapes() const;
  // Training passes from now on run under ForwardContext::static_shapes (what a recorded step
  // needs: capacity-limited MoE layers use the padded expert layout). Off by default.
  void set_static_shapes(bool on) { static_shapes_ = on; }
  // Data parallelism: training passes carry `comm` (ForwardContext::comm) so that routers see
  // the load of the whole global batch; null (the default) for a job of one rank. With expert
  // shards, every pass (training and evaluation) exchanges the routed rows over `comm` with
  // the group of ranks [rank - shard.index, rank - shard.index + shard.count).
  void set_communicator(Communicator* comm);
  // Rewrites every Parameter::compute copy from its f32 value; call after changing values
  // outside the optimizer (e.g. writing masters directly). In an inference-only model the
  // parameters that hold no master keep their compute copies as they are.
  void refresh_compute_copies();
  // The dtype of activations: the backend's compute dtype (f32 on the CPU, bf16 by default on
  // CUDA).
  DType activation_dtype() const;
  // Backpropagates loss_scale * (mean CE + weighted auxiliary losses) of the last forward_loss;
  // parameter gradients accumulate (so micro-batches add up).
  void backward(float loss_scale);
  // Called during backward with parameters whose gradients this pass will not touch again (the
  // LM head, the final norm, each block's parameters after its backward, last the embedding):
  // every parameter of parameters() exactly once, after its last contribution (a parameter used
  // in several places would be reported after the last), in reverse parameter order block by
  // block. The work that wrote them is queued on the backend, not necessarily finished.
  using GradientsReady = std::function<void(const std::vector<Parameter*>&)>;
  // The same backward, reporting finished gradients to `ready` (data parallelism starts a
  // bucket's all-reduce there, overlapping it with the rest of the pass).
  void backward(float loss_scale, const GradientsReady& ready);
  // Weighted auxiliary losses of the last forward (sum over layers), and per-layer statistics.
  double aux_loss() const;
  std::vector<AuxStats> aux_stats() const;

  // ---- inference ----
  // Logits (B*T, V) of a full forward pass with no cache (reference for parity tests and eval).
  Tensor logits(const std::vector<int32_t>& ids, int64_t batch, int64_t seq);
  void init_cache(int64_t batch, int64_t capacity);
  // Runs (B, T) new ids through the model, appending to the KV cache that already holds
  // cache_len tokens per sequence. kv_start: (B) first real token per sequence (left padding)
  // or empty. Returns logits (B*T, V) if all_positions, else (B, V) of each sequence's last token.
  Tensor forward_cached(const std::vector<int32_t>& ids, int64_t batch, int64_t seq,
                        int64_t cache_len, const std::vector<int32_t>& kv_start,
                        bool all_positions);
  // Device-resident decoding, after a prefill with forward_cached: begin_decode() keeps the
  // step's inputs (ids, positions, cache length) in fixed device tensors; decode_step() runs one
  // new token per sequence against a cache holding cache_len tokens and returns logits (B, V)
  // f32 on the device (valid until the next step). The cache length is read on the device, so
  // on a backend that captures (CUDA with cuda_graphs) the second step is recorded in a CUDA
  // Graph and every later step replays it; MoE layers take the padded expert layout there.
  // end_decode() releases the recording (init_cache() or begin_decode() again starts anew).
  void begin_decode(int64_t batch, const std::vector<int32_t>& kv_start);
  Tensor decode_step(const std::vector<int32_t>& ids, int64_t cache_len);
  // The step's input ids, (B) i32 on the device, between begin_decode() and end_decode(): a
  // device sampler writes the next ids here and decode_step_device() runs on what it holds, so
  // the host can queue the next step before it has read the sampled ids (ids outside the
  // vocabulary are the writer's fault; the gather reads them unchecked).
  Tensor decode_input_ids() const;
  Tensor decode_step_device(int64_t cache_len);
  void end_decode();
  // True when the decode steps are replayed from a CUDA Graph.
  bool decode_recorded() const;

 private:
  struct DecodeState;
  struct Block;
  struct Activations;
  Tensor run_trunk(ForwardContext& ctx, const Tensor& ids, bool checkpointing);
  Tensor head_logits(ForwardContext& ctx, const Tensor& hidden);
  // Per-row losses (B*T) f32 on the device; valid_targets gets the count of non-ignored targets.
  Tensor forward_losses(const std::vector<int32_t>& ids, const std::vector<int32_t>& targets,
                        int64_t batch, int64_t seq, bool training, bool activation_checkpointing,
                        int64_t& valid_targets);
  // The same from device ids and targets (B*T) i32 with `valid` non-ignored targets.
  Tensor forward_losses(const Tensor& ids, const Tensor& targets, int64_t batch, int64_t seq,
                        int64_t valid, bool training, bool activation_checkpointing);
  // Shape and vocabulary checks of a host batch; counts the non-ignored targets.
  void check_batch(const std::vector<int32_t>& ids, const std::vector<int32_t>& targets,
                   int64_t batch, int64_t seq, int64_t& valid_targets) const;
  struct StagedBatch {
    Tensor ids;      // (B*T) i32
    Tensor targets;  // (B*T) i32
    int64_t batch = 0, seq = 0, valid = 0;
  };
  void for_each_parameter(const std::function<void(const std::string&, Parameter&)>& fn);
  // The same walk; with `every_shard`, a sharded MoE layer's experts are listed for every
  // shard (the others' as descriptors) and fn learns the shard of each expert parameter.
  void visit_parameters(const std::function<void(const std::string&, Parameter&, int)>& fn,
                        bool every_shard);

  ModelConfig config_;
  std::shared_ptr<Backend> backend_;
  std::vector<Parameter> own_params_;  // embed_tokens, lm_head
  std::shared_ptr<Norm> final_norm_;
  std::vector<std::unique_ptr<Block>> blocks_;
  std::unique_ptr<Activations> saved_;
  bool qualified_names_ = false;
  Tensor positions_;  // (B*T) i32 training positions for positions_batch_ x positions_seq_
  int64_t positions_batch_ = 0;
  int64_t positions_seq_ = 0;
  std::vector<StagedBatch> staged_;  // per micro-batch slot (stage_batch)
  bool static_shapes_ = false;       // set_static_shapes()
  Communicator* comm_ = nullptr;     // set_communicator()
  ExpertShard shard_;
  bool inference_only_ = false;          // allocate_inference_only()
  std::unique_ptr<DecodeState> decode_;  // begin_decode() .. end_decode()
};

}  // namespace nnkit
