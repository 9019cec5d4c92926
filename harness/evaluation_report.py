"""What ``harness show`` and the end of ``harness run`` / ``harness eval`` say about one evaluation.

Per attack and certifier: its result, wall time, samples per second and peak
memory; a certifier's time-outs and errors, how its radii were found and
their mean and median; a multi-stage attack's accuracy after each stage; and
the gradient-masking check. An estimate (``sound`` false) is named as the
paper's protocol, never as certified.
"""

from __future__ import annotations

from harness.commands import text_table
from harness.results import AttackResult, CertifierResult, Cost, EvaluationResult, GradientMasking

ESTIMATE = "paper protocol (estimate, not a certificate)"


def pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}%"


def seconds_text(seconds: float | None) -> str:
    """As ``harness.render.duration`` writes times, with a decimal below two minutes (a certifier can take 0.4 s)."""
    if seconds is None:
        return "—"
    if seconds < 120:
        return f"{seconds:.1f}s"
    return f"{seconds / 60:.1f}m" if seconds < 7200 else f"{seconds / 3600:.1f}h"


def memory_text(cost: Cost) -> str:
    if cost.peak_memory_bytes is None:
        return "—"
    size = float(cost.peak_memory_bytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            break
        size /= 1024
    kind = {"cuda-allocated": "CUDA allocated", "rss": "RSS"}.get(cost.memory_kind or "", cost.memory_kind or "?")
    return f"{size:.0f} {unit} {kind}" if unit == "B" else f"{size:.1f} {unit} {kind}"


def rate_text(cost: Cost) -> str:
    rate = cost.samples_per_second
    if rate is None:
        return "—"
    return f"{rate:,.0f}/s" if rate >= 100 else f"{rate:.3g}/s"


def radius_text(c: CertifierResult) -> str:
    """``radius mean M median D (bisection, tolerance T)``; empty without radii."""
    if c.radius is None:
        return ""
    how = {"bisection": f"bisection, tolerance {c.radius_tolerance:g}" if c.radius_tolerance else "bisection",
           "closed-form": "closed form"}.get(c.radius_method or "", c.radius_method or "")
    return f"radius mean {c.radius.mean:.4g} median {c.radius.median:.4g}" + (f" ({how})" if how else "")


def certifier_outcome(c: CertifierResult) -> str:
    if c.error:
        return f"ERROR: {c.error}"
    what = f"{ESTIMATE}: {pct(c.accuracy)}" if not c.sound else f"certified {pct(c.accuracy)}"
    parts = [f"{what} of {c.samples}", f"{c.timeouts} time-outs, {c.errors} errors"]
    radius = radius_text(c)
    if radius:
        parts.append(radius)
    return "; ".join(parts)


def attack_outcome(a: AttackResult) -> str:
    if a.error:
        return f"ERROR: {a.error}"
    return f"robust {pct(a.accuracy)} (attacked {a.attacked})" + (", gradient-free" if a.gradient_free else "")


def masking_text(m: GradientMasking | None, samples: int) -> str:
    """The gradient-masking check in one line."""
    if m is None:
        return "not made (an evaluation from before it)"
    zero = "—" if m.zero_gradient_fraction is None else pct(m.zero_gradient_fraction)
    text = f"zero input gradient on {zero} of the samples; "
    if m.gradient_free_breaks is None:
        return text + "no gradient-free attack ran beside a gradient-based one"
    verdict = ("UNRELIABLE: more than 0.2 % of the samples, AutoAttack's threshold" if m.unreliable
               else "within AutoAttack's 0.2 % threshold")
    return text + f"gradient-free attacks alone broke {m.gradient_free_breaks} of {samples} samples ({verdict})"


def worst_case_text(r: EvaluationResult) -> str:
    """What robust accuracy is: the per-sample worst case over the attacks that ran, each named with its own number."""
    ran = [a for a in r.attacks if a.error is None]
    if not ran:
        return "robust accuracy —: no attack ran without error"
    each = ", ".join(f"{a.label} {pct(a.accuracy)}" for a in ran)
    if len(ran) == 1:
        return f"robust accuracy {pct(r.robust_accuracy)} under {ran[0].label}"
    return f"robust accuracy {pct(r.robust_accuracy)}: the per-sample worst case over {len(ran)} attacks ({each})"


def summary_lines(r: EvaluationResult) -> list[str]:
    """The lines under a run's one-line summary: what robust accuracy is, each certifier's radii, problems to know of."""
    lines = [worst_case_text(r)]
    for c in r.certifiers:
        if c.error is None and (c.radius is not None or c.timeouts or c.errors or not c.sound):
            detail = [radius_text(c)] if c.radius is not None else []
            if c.timeouts or c.errors:
                detail.append(f"{c.timeouts} time-outs, {c.errors} errors")
            if not c.sound:
                detail.append(ESTIMATE)
            lines.append(f"{c.name}: " + "; ".join(detail))
    if r.masking is not None and r.masking.unreliable:
        lines.append("gradient masking: " + masking_text(r.masking, r.samples))
    return lines


def result_lines(r: EvaluationResult) -> list[str]:
    """What ``harness show`` prints for one evaluation."""
    lines = [
        f"results on {r.samples} test samples:",
        f"  clean accuracy      {pct(r.clean_accuracy)}",
        f"  {worst_case_text(r).replace('robust accuracy ', 'robust accuracy     ', 1)}",
        f"  certified accuracy  {pct(r.certified_accuracy)} (certified by any sound certifier)",
        f"  gradient masking    {masking_text(r.masking, r.samples)}",
    ]
    rows = []
    for a in r.attacks:
        rows.append(["attack", a.name, a.label, attack_outcome(a), seconds_text(a.seconds), rate_text(a.cost), memory_text(a.cost)])
    for c in r.certifiers:
        rows.append(["certifier", c.name, "" if c.sound else "estimate", certifier_outcome(c), seconds_text(c.seconds), rate_text(c.cost),
                     memory_text(c.cost)])
    for name, reason in sorted(r.not_applicable.items()):
        rows.append(["certifier", name, "", f"did not apply: {reason}", "—", "—", "—"])
    if rows:
        header = ["kind", "name", "label", "outcome", "time", "samples/s", "peak memory"]
        lines += ["  " + line for line in text_table(header, rows).splitlines()]
    for a in r.attacks:
        if a.stages and a.error is None:
            lines.append(f"  {a.name} stages (robust accuracy after each): " + " → ".join(f"{s} {pct(v)}" for s, v in a.stages.items()))
    for c in r.certifiers:
        if c.sample_error:
            lines.append(f"  {c.name}: first per-sample error: {c.sample_error}")
    return lines
