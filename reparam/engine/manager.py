"""Run passes over a GraphModule to a fixed point."""

from __future__ import annotations

import time
from collections.abc import Sequence

from torch import fx

from reparam.engine.base import Pass, PassContext, PassError
from reparam.engine.graphmodule import cleanup, compile_if_stale
from reparam.errors import ReparamError

MAX_ITERATIONS = 10


def run_passes(
    gm: fx.GraphModule, passes: Sequence[Pass], ctx: PassContext, max_iterations: int = MAX_ITERATIONS
) -> fx.GraphModule:
    """Apply ``passes`` in order, repeatedly, until none changes the graph (at most ``max_iterations``).

    After every pass that changed it, the graph is dead-code eliminated and unused submodules are deleted; the
    module's code is regenerated once, before it is returned. Any exception becomes a PassError naming the pass and the block it worked on.
    Only the last round's "left alone" notes are kept: they describe the final graph.
    """
    for name, mod in gm.named_modules():
        if name and not list(mod.children()):
            ctx.provenance.setdefault(name, {ctx.full(name)})
    for _ in range(max_iterations):
        ctx.left_alone = []
        changed = False
        for p in passes:
            ctx.current_pass, ctx.current_block = p.name, ""
            start = time.perf_counter()
            try:
                result = p.run(gm, ctx)
                gm = result.module
                if result.changed:
                    cleanup(gm)
            except PassError:
                raise
            except ReparamError as exc:
                raise PassError(p.name, ctx.current_block, exc.message, exc.hint) from exc
            except Exception as exc:
                raise PassError(
                    p.name,
                    ctx.current_block,
                    f"{type(exc).__name__}: {exc}",
                    hint=f"convert without it (skip=['{p.name}'] or `skip` {p.name}) and report the model "
                    "that triggers this",
                ) from exc
            ctx.seconds[p.name] = ctx.seconds.get(p.name, 0.0) + time.perf_counter() - start
            changed |= result.changed
        if not changed:
            return _finished(gm)
    ctx.warn(f"passes did not reach a fixed point after {max_iterations} rounds")
    return _finished(gm)


def _finished(gm: fx.GraphModule) -> fx.GraphModule:
    """Lint the rewritten graph once (a malformed graph is a bug of the passes) and generate its code."""
    gm.graph.lint()
    compile_if_stale(gm)
    return gm
