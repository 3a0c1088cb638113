#!/usr/bin/env python3
"""Load a TensorBoard log directory with TensorBoard's own readers and print what they see as JSON.

Usage: .venv/bin/python check_events.py LOGDIR

Two readers are used:
  * event_accumulator.EventAccumulator: the classic reader (scalars, histograms, file_version);
  * plugin_event_accumulator.EventAccumulator: what the TensorBoard server itself runs, which
    migrates simple_value/histo into tensors (histograms become [left, right, count] rows).
Exits non-zero (with a message on stderr) when the directory holds no events TensorBoard accepts.
"""

import json
import sys

from tensorboard.backend.event_processing import event_accumulator as ea
from tensorboard.backend.event_processing import plugin_event_accumulator as pea
from tensorboard.util import tensor_util

KEEP_ALL = {ea.SCALARS: 0, ea.HISTOGRAMS: 0, ea.TENSORS: 0, ea.COMPRESSED_HISTOGRAMS: 0}


def classic(logdir):
    acc = ea.EventAccumulator(logdir, size_guidance=KEEP_ALL)
    acc.Reload()
    tags = acc.Tags()
    scalars = {
        tag: [[e.step, e.value] for e in acc.Scalars(tag)] for tag in tags[ea.SCALARS]
    }
    histograms = {}
    for tag in tags[ea.HISTOGRAMS]:
        histograms[tag] = [
            {
                "step": e.step,
                "min": e.histogram_value.min,
                "max": e.histogram_value.max,
                "num": e.histogram_value.num,
                "sum": e.histogram_value.sum,
                "sum_squares": e.histogram_value.sum_squares,
                "bucket_limit": list(e.histogram_value.bucket_limit),
                "bucket": list(e.histogram_value.bucket),
            }
            for e in acc.Histograms(tag)
        ]
    return {"file_version": acc.file_version, "scalars": scalars, "histograms": histograms}


def server_view(logdir):
    acc = pea.EventAccumulator(logdir, size_guidance={pea.TENSORS: 0})
    acc.Reload()
    out = {}
    for tag in acc.Tags()[pea.TENSORS]:
        plugin = acc.SummaryMetadata(tag).plugin_data.plugin_name
        out[tag] = {
            "plugin": plugin,
            "steps": [
                [e.step, tensor_util.make_ndarray(e.tensor_proto).tolist()]
                for e in acc.Tensors(tag)
            ],
        }
    return out


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: check_events.py LOGDIR")
    logdir = sys.argv[1]
    result = classic(logdir)
    result["tensors"] = server_view(logdir)
    if result["file_version"] is None or not (result["scalars"] or result["histograms"]):
        sys.exit(f"check_events.py: TensorBoard found no events in {logdir}")
    json.dump(result, sys.stdout)
    print()


if __name__ == "__main__":
    main()
