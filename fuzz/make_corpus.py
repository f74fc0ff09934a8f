#!/usr/bin/env python3
"""Writes the seed corpus for nnkit_fuzz_safetensors into fuzz/corpus/ (small valid and invalid
safetensors files). Deterministic; re-run after changing it and commit the result."""
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "corpus")


def st(header, data=b"", pad=True):
    text = header if isinstance(header, bytes) else json.dumps(header, separators=(",", ":")).encode()
    if pad:
        text += b" " * ((8 - len(text) % 8) % 8)
    return struct.pack("<Q", len(text)) + text + data


def entry(dtype, shape, begin, end):
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


SEEDS = {
    # valid
    "valid_f32.safetensors": st({"w": entry("F32", [2, 2], 0, 16)}, struct.pack("<4f", 1, 2, 3, 4)),
    "valid_multi_meta.safetensors": st(
        {"__metadata__": {"format": "pt", "step": "7"},
         "a": entry("BF16", [3], 0, 6), "b": entry("I32", [2], 6, 14),
         "c": entry("U8", [0], 14, 14), "d": entry("I64", [], 14, 22), "e": entry("F16", [1, 1], 22, 24)},
        bytes(range(24))),
    "valid_empty.safetensors": st({}),
    "valid_unpadded.safetensors": st({"x": entry("U8", [3], 0, 3)}, b"abc", pad=False),
    # invalid
    "bad_overlap.safetensors": st({"a": entry("F32", [2], 0, 8), "b": entry("F32", [2], 4, 12)}, bytes(12)),
    "bad_gap.safetensors": st({"a": entry("F32", [1], 0, 4), "b": entry("F32", [1], 8, 12)}, bytes(12)),
    "bad_dtype.safetensors": st({"a": entry("F64", [1], 0, 8)}, bytes(8)),
    "bad_span.safetensors": st({"a": entry("F32", [2, 3], 0, 20)}, bytes(20)),
    "bad_overflow.safetensors": st({"a": entry("F32", [4294967296, 4294967296], 0, 0)}),
    "bad_trailing.safetensors": st({"a": entry("U8", [1], 0, 1)}, b"xy"),
    "bad_past_eof.safetensors": st({"a": entry("U8", [16], 0, 16)}, b"short"),
    "bad_dup.safetensors": st(b'{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},'
                              b'"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}', b"z"),
    "bad_json.safetensors": st(b'{"a":{"dtype":"U8","shape":[1],"data_offs', b""),
    "bad_header_len.safetensors": struct.pack("<Q", 2**64 - 1) + b"{}",
    "bad_pickle.safetensors": b"\x80\x02}q\x00(X\x01\x00\x00\x00wq\x01",
    "bad_meta.safetensors": st({"__metadata__": {"k": 1}}),
}


def main():
    os.makedirs(OUT, exist_ok=True)
    for name, data in SEEDS.items():
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(data)
    print(f"wrote {len(SEEDS)} seeds to {OUT}")


if __name__ == "__main__":
    main()
