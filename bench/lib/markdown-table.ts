// Results as Markdown: one table per measure, failed cases say why in place of their numbers.
import type { CaseResult, Column, MetricValue } from './measure.ts';

function formatValue(value: MetricValue | undefined, digits = 0): string {
  if (value === null || value === undefined) return '–';
  if (typeof value === 'string') return value;
  if (!Number.isFinite(value)) return '–';
  return value.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

export function markdownTable(columns: readonly Column[], results: readonly CaseResult[]): string {
  const header = ['case', ...columns.map((c) => c.label)];
  const rows = results.map((r) =>
    r.ok
      ? [r.case, ...columns.map((c) => formatValue(r.metrics[c.key], c.digits))]
      : [
          r.case,
          `**failed**: ${(r.error ?? 'unknown error').replace(/\|/g, '\\|')}`,
          ...columns.slice(1).map(() => ''),
        ],
  );
  const numeric = columns.map((c) => results.some((r) => typeof r.metrics[c.key] === 'number'));
  const align = ['---', ...numeric.map((n) => (n ? '---:' : '---'))];
  return [header, align, ...rows].map((cells) => `| ${cells.join(' | ')} |`).join('\n');
}
