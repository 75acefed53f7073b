"""The Pareto report of a registry: a markdown table and a PNG of accuracy against latency."""

from __future__ import annotations

from pathlib import Path

from compression.registry import Bundle

HEADERS = ["model", "id", "stage", "precision", "test acc", "agree w/ teacher", "b1 p50 ms", "b32 p50 ms", "size MB"]
COLUMNS = "| " + " | ".join([*HEADERS, "params", "Pareto"]) + " |"


def pareto_front(bundles: list[Bundle]) -> set[str]:
    """Ids of bundles that no other bundle beats on both test accuracy and batch-1 latency."""

    def dominates(a: Bundle, b: Bundle) -> bool:
        ma, mb = a.manifest.metrics, b.manifest.metrics
        no_worse = ma.test_accuracy >= mb.test_accuracy and ma.latency_ms.b1_p50 <= mb.latency_ms.b1_p50
        better = ma.test_accuracy > mb.test_accuracy or ma.latency_ms.b1_p50 < mb.latency_ms.b1_p50
        return no_worse and better

    return {b.id for b in bundles if not any(dominates(o, b) for o in bundles if o is not b)}


def markdown_table(bundles: list[Bundle]) -> str:
    front = pareto_front(bundles)
    rows = [COLUMNS, "|" + "---|" * (COLUMNS.count("|") - 1)]
    for b in sorted(bundles, key=lambda x: x.manifest.metrics.latency_ms.b1_p50):
        m, metrics, latency = b.manifest, b.manifest.metrics, b.manifest.metrics.latency_ms
        rows.append(
            f"| {m.name} | `{m.id}` | {m.stage} | {m.precision} | {metrics.test_accuracy:.3f} | "
            f"{metrics.agreement_with_teacher:.3f} | {latency.b1_p50:.2f} | {latency.b32_p50:.1f} | "
            f"{metrics.size_bytes / 1e6:.1f} | {metrics.params / 1e6:.2f}M | {'✓' if b.id in front else ''} |"
        )
    return "\n".join(rows) + "\n"


def plot(bundles: list[Bundle], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    front = pareto_front(bundles)
    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    for b in bundles:
        m = b.manifest.metrics
        colour = "tab:red" if b.manifest.role == "teacher" else ("tab:blue" if b.id in front else "tab:gray")
        ax.scatter(m.latency_ms.b1_p50, m.test_accuracy, s=20 + m.size_bytes / 2e5, c=colour, alpha=0.6)
        ax.annotate(
            b.manifest.name,
            (m.latency_ms.b1_p50, m.test_accuracy),
            fontsize=7,
            xytext=(4, 4),
            textcoords="offset points",
        )
    ax.set_xscale("log")
    ax.set_xlabel("batch-1 p50 latency, ms (ONNX Runtime, CPU; log scale)")
    ax.set_ylabel("test accuracy")
    ax.set_title("kdcanary registry: accuracy vs latency (marker area ∝ file size; blue = Pareto front)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(bundles: list[Bundle], out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    table, image = out / "pareto.md", out / "pareto.png"
    threads = {b.manifest.metrics.latency_ms.threads for b in bundles}
    table.write_text(
        "# kdcanary models\n\nLatency in ONNX Runtime on CPU with "
        f"{', '.join(map(str, sorted(threads)))} intra-op thread(s), measured when each model was registered.\n\n"
        + markdown_table(bundles)
        + "\n![accuracy vs latency](pareto.png)\n"
    )
    plot(bundles, image)
    return table, image
