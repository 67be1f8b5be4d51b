/**
 * Triton's priority queues: levels 1..N (1 first), each FIFO, plus the requests whose queue
 * timeout expired under the DELAY action, served after everything else.
 */
export class PriorityQueues<T> {
  private readonly levels: T[][];
  private readonly delayed: T[] = [];

  constructor(levelCount: number) {
    this.levels = Array.from({ length: Math.max(1, levelCount) }, () => []);
  }

  get size(): number {
    return this.levels.reduce((n, level) => n + level.length, this.delayed.length);
  }

  levelSize(level: number): number {
    return this.levels[level - 1].length;
  }

  push(item: T, level: number): void {
    this.levels[level - 1].push(item);
  }

  /** Moves an item behind every undelayed one (Triton's DELAY timeout action). */
  delay(item: T): void {
    if (this.remove(item)) this.delayed.push(item);
  }

  remove(item: T): boolean {
    for (const list of [...this.levels, this.delayed]) {
      const index = list.indexOf(item);
      if (index >= 0) {
        list.splice(index, 1);
        return true;
      }
    }
    return false;
  }

  /** Items in service order. */
  *ordered(): Generator<T> {
    for (const list of [...this.levels, this.delayed]) yield* list;
  }

  drain(): T[] {
    const all = [...this.ordered()];
    for (const list of [...this.levels, this.delayed]) list.length = 0;
    return all;
  }
}
