#!/usr/bin/env python3
"""Write a reference event file with TensorBoard's own writer, and print what it wrote as JSON.

Usage: .venv/bin/python write_reference.py LOGDIR

Uses tensorboard.summary.writer.event_file_writer.EventFileWriter (the writer PyTorch's
SummaryWriter wraps) and the generated protobuf classes, so our reader can be checked against
files it did not write itself. A graph_def event is included to exercise skipping unknown kinds.
"""

import json
import sys
import time

from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: write_reference.py LOGDIR")
    writer = EventFileWriter(sys.argv[1])
    scalars = [[step, 0.5 * step - 1.25] for step in range(1, 6)]
    for step, value in scalars:
        summary = summary_pb2.Summary(
            value=[summary_pb2.Summary.Value(tag="ref/scalar", simple_value=value)]
        )
        writer.add_event(event_pb2.Event(wall_time=time.time(), step=step, summary=summary))
    histo = dict(
        min=-2.0, max=3.0, num=6.0, sum=4.5, sum_squares=18.25,
        bucket_limit=[-1.0, 0.0, 1.0, 3.0], bucket=[1.0, 0.0, 2.0, 3.0],
    )
    summary = summary_pb2.Summary(
        value=[summary_pb2.Summary.Value(tag="ref/histo", histo=summary_pb2.HistogramProto(**histo))]
    )
    writer.add_event(event_pb2.Event(wall_time=time.time(), step=7, summary=summary))
    writer.add_event(event_pb2.Event(wall_time=time.time(), step=8, graph_def=b"\x0a\x00"))
    writer.close()
    json.dump({"scalars": {"ref/scalar": scalars}, "histograms": {"ref/histo": [[7, histo]]}}, sys.stdout)
    print()


if __name__ == "__main__":
    main()
