// Scans a source tree for hard-coded private keys and secrets (KEY-5). Run: `npm run scan-secrets`.
// Exit code 1 when anything is found. Test fixtures generate their secrets at run time instead of
// committing them, so the tree itself must scan clean.
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';

export interface Finding {
  file: string;
  line: number;
  rule: string;
}

const SKIP_DIRS = new Set(['node_modules', '.git', 'data', 'coverage', 'results', 'dist']);
const MAX_FILE_BYTES = 2 * 1024 * 1024;

/** Shannon entropy in bits per character. */
function entropy(value: string): number {
  const counts = new Map<string, number>();
  for (const ch of value) counts.set(ch, (counts.get(ch) ?? 0) + 1);
  let bits = 0;
  for (const n of counts.values()) bits -= (n / value.length) * Math.log2(n / value.length);
  return bits;
}

interface Rule {
  name: string;
  pattern: RegExp;
  /** Extra check on the captured value (group 1), e.g. that it looks random. */
  accept?: (value: string) => boolean;
}

/** Looks like a random secret rather than words: mixed character classes, high entropy. */
function randomLooking(value: string, minEntropy: number): boolean {
  if (/^[A-Za-z]+([-_.][A-Za-z]+)*$/.test(value) && !/[A-Z].*[a-z].*[A-Z]/.test(value)) return false;
  const classes = [/[a-z]/, /[A-Z]/, /[0-9]/].filter((c) => c.test(value)).length;
  return classes >= 2 && entropy(value) >= minEntropy;
}

// A PEM private key with its base64 body (a template that only builds the header is not a key).
const PEM_PRIVATE_KEY = /-----BEGIN ((RSA|EC|DSA|OPENSSH|ENCRYPTED|SM2) )?PRIVATE KEY-----\r?\n[A-Za-z0-9+/=]{40,}/g;

const RULES: Rule[] = [
  {
    // Castellan's own credentials (prefix + 256 random bits); placeholders like cas_rft_AAAA… are not.
    name: 'castellan-token',
    pattern: /\bcas_(?:adm|vnd|setup|ops|ses|rft|enr|inv|dvt|fac|whsec|prs)_[A-Za-z0-9_-]{43}\b/,
    accept: (value) => randomLooking(value.slice(value.lastIndexOf('_', 12) + 1), 3.5),
  },
  { name: 'aws-access-key', pattern: /\b(AKIA|ASIA)[0-9A-Z]{16}\b/ },
  { name: 'slack-token', pattern: /\bxox[abpr]-[0-9A-Za-z-]{10,}/ },
  { name: 'github-token', pattern: /\bgh[pousr]_[A-Za-z0-9]{36,}\b/ },
  {
    // 32-byte keys written as hex or base64 in a key-like assignment.
    name: 'assigned-key-material',
    // Public keys are meant to be published: only other key names count.
    pattern: /(?<!public[_-]?)key\w*["']?\s*[:=]\s*["'`]([0-9a-fA-F]{64}|[A-Za-z0-9+/]{43}=)["'`]/i,
    accept: (value) => randomLooking(value, 3.0),
  },
  {
    // A secret-looking name assigned a long, random-looking literal.
    name: 'assigned-secret',
    pattern:
      /(?:secret|password|passwd|token|api[_-]?key|private[_-]?key|root[_-]?key|client[_-]?secret)\w*["']?\s*[:=]\s*["'`]([A-Za-z0-9+/=_\-.]{20,})["'`]/i,
    accept: (value) => randomLooking(value, 3.5),
  },
];

/** SHA-256 of published test-vector values the scan may meet (scripts/secret-scan-allow.json). */
const ALLOWED: ReadonlySet<string> = (() => {
  try {
    const file = JSON.parse(readFileSync(new URL('./secret-scan-allow.json', import.meta.url), 'utf8')) as {
      allowed: { sha256: string }[];
    };
    return new Set(file.allowed.map((a) => a.sha256));
  } catch {
    return new Set<string>();
  }
})();

const isAllowed = (value: string) => ALLOWED.has(createHash('sha256').update(value).digest('hex'));

export function scanText(text: string, file: string): Finding[] {
  const findings: Finding[] = [];
  for (const m of text.matchAll(PEM_PRIVATE_KEY)) {
    findings.push({ file, line: text.slice(0, m.index).split('\n').length, rule: 'private-key-block' });
  }
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!;
    // One finding per line is enough to point a human at it.
    const hit = RULES.find((rule) => {
      const m = rule.pattern.exec(line);
      return m !== null && (!rule.accept || rule.accept(m[1] ?? m[0])) && !isAllowed(m[1] ?? m[0]);
    });
    if (hit && !findings.some((f) => f.line === i + 1)) findings.push({ file, line: i + 1, rule: hit.name });
  }
  return findings;
}

export function scanTree(root: string): Finding[] {
  const findings: Finding[] = [];
  const walk = (dir: string) => {
    for (const entry of readdirSync(dir, { withFileTypes: true })) {
      if (SKIP_DIRS.has(entry.name)) continue;
      const path = join(dir, entry.name);
      if (entry.isDirectory()) walk(path);
      else if (entry.isFile() && statSync(path).size <= MAX_FILE_BYTES) {
        const buffer = readFileSync(path);
        if (buffer.includes(0)) continue; // binary
        findings.push(...scanText(buffer.toString('utf8'), relative(root, path)));
      }
    }
  };
  walk(root);
  return findings;
}

if (import.meta.main) {
  const root = process.argv[2] ?? process.cwd();
  const findings = scanTree(root);
  for (const f of findings) process.stdout.write(`${f.file}:${f.line}: possible hard-coded secret (${f.rule})\n`);
  process.stdout.write(findings.length ? `${findings.length} finding(s)\n` : 'no hard-coded secrets found\n');
  process.exitCode = findings.length ? 1 : 0;
}
