"""Row-count buckets: a CUDA graph has fixed shapes, so batches are padded up to the next bucket."""

from __future__ import annotations


def bucket_sizes(max_rows: int) -> tuple[int, ...]:
    """Powers of two below `max_rows`, then `max_rows` itself: 1, 2, 4, ..., max_rows."""
    if max_rows < 1:
        raise ValueError(f"max_rows must be at least 1, got {max_rows}")
    sizes: list[int] = []
    size = 1
    while size < max_rows:
        sizes.append(size)
        size *= 2
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
