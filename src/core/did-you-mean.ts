/**
 * Optimal string alignment distance (Levenshtein plus adjacent transpositions): the number of
 * single-character edits between `a` and `b`.
 */
export function editDistance(a: string, b: string): number {
  const rows = Array.from({ length: a.length + 1 }, (_, i) => [i, ...Array<number>(b.length).fill(0)]);
  for (let j = 1; j <= b.length; j += 1) rows[0][j] = j;
  for (let i = 1; i <= a.length; i += 1) {
    for (let j = 1; j <= b.length; j += 1) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      rows[i][j] = Math.min(rows[i - 1][j] + 1, rows[i][j - 1] + 1, rows[i - 1][j - 1] + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) {
        rows[i][j] = Math.min(rows[i][j], rows[i - 2][j - 2] + 1);
      }
    }
  }
  return rows[a.length][b.length];
}

/**
 * The candidate `name` most likely means: a typo (a third of its letters off at most), or a name
 * it is the start or a word of (`guidance` for `guidance_scale`); undefined when none is close.
 */
export function closestName(name: string, candidates: Iterable<string>): string | undefined {
  const wanted = name.toLowerCase();
  let best: { candidate: string; distance: number } | undefined;
  for (const candidate of candidates) {
    const lower = candidate.toLowerCase();
    const partOf = wanted.length >= 3 && lower.split(/[_-]/).some((word) => word === wanted || lower.startsWith(wanted));
    const limit = Math.max(1, Math.floor(wanted.length / 3));
    // The lengths' difference is edits already: a 100 kB name is not compared letter by letter.
    if (!partOf && Math.abs(wanted.length - lower.length) > limit) continue;
    const distance = partOf ? 0.5 : editDistance(wanted, lower);
    if (distance <= limit && (best === undefined || distance < best.distance)) {
      best = { candidate, distance };
    }
  }
  return best?.candidate;
}
