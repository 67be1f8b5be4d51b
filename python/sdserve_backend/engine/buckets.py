"""Row-count buckets: a CUDA graph has fixed shapes, so batches are padded up to the next bucket."""

from __future__ import annotations


def bucket_sizes(max_rows: int) -> tuple[int, ...]:
    """1, 2, 4, then each power of two and one and a half times it (6, 8, 12, 16, 24, ...) below
    `max_rows`, then `max_rows` itself. From a few rows on a UNet call's time grows about linearly
    with its rows, so padding costs what it adds: the half steps cap it at a third of the rows
    (3 requests with guidance, 6 rows, ran in the 8-row graph; 5, 10 rows, in the 16-row one)."""
    if max_rows < 1:
        raise ValueError(f"max_rows must be at least 1, got {max_rows}")
    sizes = [size for size in (1, 2) if size < max_rows]
    power = 4
    while power < max_rows:
        sizes += [size for size in (power, power + power // 2) if size < max_rows]
        power *= 2
    sizes.append(max_rows)
    return tuple(sizes)


def pick_bucket(rows: int, buckets: tuple[int, ...]) -> int | None:
    """The smallest bucket that holds `rows`, or None when every bucket is smaller."""
    for size in sorted(buckets):
        if size >= rows:
            return size
    return None


def chunks(rows: int, largest: int) -> list[tuple[int, int]]:
    """[start, stop) ranges of at most `largest` rows covering `rows` rows."""
    return [(start, min(start + largest, rows)) for start in range(0, rows, largest)]
