"""Expert load as Prometheus gauges and as the model card's table."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kubetune_trainer.metrics import TrainerMetrics
    from kubetune_trainer.moe.routing import RoutingStats

#: above this many experts the card shows each layer's busiest share, not every expert
CARD_MAX_EXPERT_COLUMNS = 16


def record_metrics(metrics: TrainerMetrics, stats: RoutingStats) -> None:
    """Set the MoE gauges of the contract from one step's statistics."""
    for expert, share in enumerate(stats.mean_share):
        metrics.moe_expert_token_ratio.labels(expert=str(expert)).set(share)
    for layer, row, entropy in zip(stats.layers, stats.token_share, stats.entropy, strict=True):
        metrics.moe_max_expert_token_ratio.labels(layer=str(layer)).set(max(row))
        metrics.moe_routing_entropy.labels(layer=str(layer)).set(entropy)
    if stats.aux_loss is not None:
        metrics.moe_aux_loss.set(stats.aux_loss)


def card_section(moe: dict[str, Any] | None) -> str:
    """The model card's "Expert load" section (empty for dense models)."""
    if not moe:
        return ""
    experts, top_k = int(moe["numExperts"]), int(moe["topK"])
    shares: list[list[float]] = moe["tokenShare"]
    wide = experts <= CARD_MAX_EXPERT_COLUMNS
    cols = [f"e{i}" for i in range(experts)] if wide else ["busiest expert"]
    head = "| layer | " + " | ".join(cols) + " | routing entropy (nats) |"
    rule = "| --- " * (len(cols) + 2) + "|"
    rows = []
    for layer, row, entropy in zip(moe["layers"], shares, moe["routingEntropy"], strict=True):
        cells = [f"{v:.3f}" for v in row] if wide else [f"{max(row):.3f}"]
        rows.append(f"| {layer} | " + " | ".join(cells) + f" | {entropy:.3f} |")
    mean = [sum(col) / len(shares) for col in zip(*shares, strict=True)]
    cells = [f"{v:.3f}" for v in mean] if wide else [f"{max(mean):.3f}"]
    mean_entropy = sum(moe["routingEntropy"]) / len(shares)
    rows.append("| mean | " + " | ".join(cells) + f" | {mean_entropy:.3f} |")
    selected = moe.get("trainExperts") or []
    setup = [
        f"{experts} experts per MoE layer, {top_k} per token",
        "router frozen" if moe.get("freezeRouter") or selected else "router trained",
        f"only experts {selected} trained" if selected else "all experts trainable",
        f"load-balancing loss coefficient {moe.get('auxLossCoef', 0.0):g}",
    ]
    aux = moe.get("auxLoss")
    aux_line = f" Last step's load-balancing loss: {aux:.4f}." if aux is not None else ""
    return (
        "## Expert load\n\n"
        f"{'; '.join(setup)}. Share of each layer's top-{top_k} routing assignments per "
        f"expert in the last training step (balanced: {1 / experts:.3f} each), and the mean "
        f"entropy of the router (uniform: ln {experts} = {math.log(experts):.3f})."
        f"{aux_line}\n\n" + "\n".join([head, rule, *rows]) + "\n\n"
    )
