"""Technical, aesthetic and motion filtering of captioned videos (`t2v data filter`).

`scan` decodes a video once (probe + motion signals), `aesthetic` scores frames (opencv or laion),
`measure` runs one video in a worker with a content-keyed cache, `stage` decides and writes the outputs,
`report` summarises them.
"""

from components.data.filter.stage import REASONS, decide, run_filter

__all__ = ["REASONS", "decide", "run_filter"]
