"""Image build check: the baked demo workspace must hold the dashboard's default analysis.

`coherence demo` simulates, trains and precomputes the default view; this fails the build
when that view is not in the cache, because a container would then greet its first visitor
with a Compute button and a minute of CPU instead of the two-time heatmap. Cache keys hash
file contents, not paths, so the entrypoint may copy the workspace anywhere and still hit.

Usage: python docker/check_demo.py WORKSPACE
"""

from __future__ import annotations

import sys
from pathlib import Path

from coherence.cache.jobs import JobRunner
from coherence.dashboard.selection import default_selection


def missing_default_analyses(workspace: Path) -> list[str]:
    """Keys (or reasons) of the default view's requests that are not cached."""
    selection = default_selection(workspace)
    if selection is None:
        return [f"{workspace} has no dataset with a compatible checkpoint"]
    runner = JobRunner(workspace)
    keys = [runner.key(request) for request in selection.to_requests(workspace)]
    return [key for key in keys if runner.status(key).state != "done"]


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__.strip().splitlines()[-1])
    root = Path(sys.argv[1])
    missing = missing_default_analyses(root)
    if missing:
        sys.exit(
            f"{root}: the default analysis is not cached ({', '.join(m[:12] for m in missing)}); "
            "`coherence demo` should precompute it (coherence.demo.precompute_default_analysis)"
        )
    print(f"{root}: default analysis cached; the first heatmap shows without computing")
