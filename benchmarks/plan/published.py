"""``kubetune plan``'s estimator against published memory figures for 1.5B-70B models.

Each row states the source's setting, its figure, and the estimator's figure for the
same setting (model states only where the source counts only those). Decimal GB, as the
sources print them.

    python benchmarks/plan/published.py      # prints the Markdown table in BENCHMARKS.md
"""

from __future__ import annotations

from dataclasses import replace

from kubetune.plan import ModelShape, TrainingSetup, estimate_memory
from kubetune.plan.advice import fit
from kubetune.plan.gpus import GpuType, gpu_by_name

GB = 1e9


def llama(h: int, layers: int, heads: int, inter: int, kv: int | None = None) -> ModelShape:
    return ModelShape.from_config(
        {
            "model_type": "llama",
            "hidden_size": h,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "num_key_value_heads": kv or heads,
            "intermediate_size": inter,
            "vocab_size": 32000,
            "tie_word_embeddings": False,
        }
    )


GPT2_XL = ModelShape.from_config(
    {"model_type": "gpt2", "n_embd": 1600, "n_layer": 48, "n_head": 25, "vocab_size": 50257}
)
LLAMA2_7B = llama(4096, 32, 32, 11008)
LLAMA2_13B = llama(5120, 40, 40, 13824)
LLAMA_65B = llama(8192, 80, 64, 22016)
LLAMA2_70B = llama(8192, 80, 64, 28672, kv=8)
BASE = TrainingSetup(
    method="full",
    precision="bf16",
    strategy="deepspeed",
    zero_stage=0,
    offload="none",
    world_size=1,
    micro_batch_size=1,
    gradient_accumulation_steps=2,
    max_seq_length=512,
    gradient_checkpointing=True,
)
A6000 = GpuType("48 GB GPU (RTX A6000)", 49_140 * 2**20, 0.0)


def states(shape: ModelShape, setup: TrainingSetup) -> float:
    est = estimate_memory(shape, setup)
    return (est.part("weights") + est.part("gradients") + est.part("optimizer")) / GB


def peak(shape: ModelShape, setup: TrainingSetup) -> float:
    return estimate_memory(shape, setup).peak_bytes / GB


def rows() -> list[tuple[str, str, str, str]]:
    out: list[tuple[str, str, str, str]] = []
    out.append(
        (
            "ZeRO §3.1: GPT-2 1.5B, mixed-precision Adam, model states (16 B/param)",
            "24 GB",
            f"{states(GPT2_XL, BASE):.1f} GB ({GPT2_XL.parameters / 1e9:.2f}B parameters)",
            "biases and position embeddings not counted (-0.3%)",
        )
    )
    z = GPT2_XL.with_counted_parameters(7_500_000_000)
    for stage, published in ((0, "120"), (1, "31.4"), (2, "16.6"), (3, "1.9")):
        s = replace(BASE, zero_stage=stage, world_size=64)
        out.append(
            (
                f"ZeRO Fig. 1: 7.5B, 64 GPUs, {f'ZeRO-{stage}' if stage else 'baseline'}, "
                "model states",
                f"{published} GB",
                f"{states(z, s):.1f} GB",
                "",
            )
        )
    fp32 = replace(BASE, precision="fp32", strategy="ddp", method="full")
    for name, shape in (("Llama-2-7B", LLAMA2_7B), ("Llama-2-13B", LLAMA2_13B)):
        out.append(
            (
                f"Accelerate estimator: {name} fp32, 'training using Adam' = 4 x model size",
                f"{4 * 4 * shape.parameters / GB:.1f} GB",
                f"{states(shape, fp32):.1f} GB",
                "same rule (weights + grads + 2 moments); activations excluded by both",
            )
        )
    full65 = replace(BASE, zero_stage=0)
    out.append(
        (
            "QLoRA paper: LLaMA-65B, regular 16-bit fine-tuning",
            "> 780 GB",
            f"{states(LLAMA_65B, full65):.0f} GB states, {peak(LLAMA_65B, full65):.0f} GB peak",
            "we count 16 B/param (fp32 master); 780 GB is 12 B/param",
        )
    )
    for seq in (512, 2048):
        q = replace(
            BASE,
            method="qlora",
            lora_rank=64,
            lora_dropout=0.05,
            quantized_bits=4,
            strategy="ddp",
            max_seq_length=seq,
        )
        p = estimate_memory(LLAMA_65B, q).peak_bytes
        out.append(
            (
                f"QLoRA paper: LLaMA-65B QLoRA r=64 all layers, micro-batch 1 x {seq}, "
                "checkpointing",
                "fits one 48 GB GPU",
                f"{p / GB:.1f} GB: {fit(p, A6000)} on 48 GB",
                "paged optimizer not modelled",
            )
        )
    a100 = gpu_by_name("A100-80GB")
    assert a100 is not None
    for gpus in (8, 16):
        f = replace(BASE, strategy="fsdp", world_size=gpus, max_seq_length=2048)
        p = estimate_memory(LLAMA2_70B, f).peak_bytes
        out.append(
            (
                f"HF blog: Llama-2-70B full FSDP bf16, checkpointing, 1 x 2048 tokens, "
                f"{gpus} A100-80GB",
                "ran on 16 A100-80GB" if gpus == 16 else "-",
                f"{p / GB:.1f} GB per GPU: {fit(p, a100)}",
                "",
            )
        )
    return out


def main() -> None:
    print("| setting (source) | published | kubetune plan | note |")
    print("| --- | --- | --- | --- |")
    for row in rows():
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
