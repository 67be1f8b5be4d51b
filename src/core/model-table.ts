import type { ModelStatus } from './types.js';

/** The model table Triton prints at start-up: `| Model | Version | Status |` with ASCII borders. */
export function formatModelTable(rows: ModelStatus[]): string {
  const cells = rows.map((row) => [row.name, row.version, row.state === 'READY' ? 'READY' : `${row.state}: ${row.reason}`]);
  const header = ['Model', 'Version', 'Status'];
  const widths = header.map((h, i) => Math.max(h.length, ...cells.map((c) => c[i].length)));
  const border = `+${widths.map((w) => '-'.repeat(w + 2)).join('+')}+`;
  const line = (values: string[]) => `| ${values.map((v, i) => v.padEnd(widths[i])).join(' | ')} |`;
  return [border, line(header), border, ...cells.map(line), border].join('\n');
}
