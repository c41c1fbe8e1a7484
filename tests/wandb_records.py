"""Read back an offline W&B run file (``run-*.wandb``): a LevelDB-style log of protobuf Records.

Format (wandb's datastore): a 7-byte header (b":W&B", magic 0xBEE1, version 0), then 32 KiB blocks
of chunks, each ``crc32 (4) | length (2) | type (1) | payload``; type 1 = full record, 2/3/4 =
first/middle/last piece. Test-only helper: wandb 0.31 ships no Python reader.
"""

from __future__ import annotations

import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2 as pb

BLOCK = 32 * 1024
HEADER = 7


def read_records(path: Path) -> list[pb.Record]:
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    records, pending, pos = [], b"", HEADER
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:  # block trailer padding
            pos += BLOCK - pos % BLOCK
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        payload = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            continue
        pending = payload if kind in (1, 2) else pending + payload
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records
