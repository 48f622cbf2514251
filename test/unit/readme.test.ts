/**
 * README.md cannot drift from the command line: its code fences pair up (every block names its
 * language, so a stray fence cannot open a block unseen), and every `smart` command in its sh and
 * yaml blocks parses with the CLI's own parsers — the fast path of push/pull or the commander
 * program with actions that only record what they were given — and names images the names parser
 * accepts. Nothing is run.
 */
import fs from 'node:fs';
import path from 'node:path';
import { CommanderError, type Command } from 'commander';
import { describe, expect, it } from 'vitest';
import { parseTransferArgs } from '../../src/cli/options.js';
import { buildProgram } from '../../src/cli/program.js';
import { parseImageName } from '../../src/transports/all.js';
import { repoRoot } from '../harness/run.js';

const README = fs.readFileSync(path.join(repoRoot, 'README.md'), 'utf8');

interface CodeBlock {
  lang: string;
  /** 1-based line of the opening fence. */
  line: number;
  lines: string[];
}

/** The fenced code blocks, as CommonMark pairs them, and what is wrong with the fences. */
function codeBlocks(markdown: string): { blocks: CodeBlock[]; problems: string[] } {
  const blocks: CodeBlock[] = [];
  const problems: string[] = [];
  let open: (CodeBlock & { fence: string }) | undefined;
  markdown.split('\n').forEach((text, i) => {
    const m = /^ {0,3}(`{3,}|~{3,})(.*)$/.exec(text);
    if (open) {
      if (m && m[1]!.startsWith(open.fence) && m[1]![0] === open.fence[0] && m[2]!.trim() === '') {
        blocks.push({ lang: open.lang, line: open.line, lines: open.lines });
        open = undefined;
      } else open.lines.push(text);
    } else if (m) {
      const lang = m[2]!.trim();
      if (!lang) problems.push(`line ${i + 1}: a fence without a language opens a block (a closing fence with no block to close?)`);
      open = { lang, line: i + 1, lines: [], fence: m[1]! };
    }
  });
  if (open) problems.push(`line ${open.line}: the block opened here is never closed`);
  return { blocks, problems };
}

type Token = { word: string } | { op: string };

/** Splits a shell line into words and operators (quotes, `#` comments, `| || && ; & < >`), as sh would. */
function shellTokens(line: string): Token[] {
  const tokens: Token[] = [];
  let word: string | undefined;
  const end = () => {
    if (word !== undefined) tokens.push({ word });
    word = undefined;
  };
  for (let i = 0; i < line.length; i++) {
    const c = line[i]!;
    if (c === "'" || c === '"') {
      const close = line.indexOf(c, i + 1);
      if (close < 0) throw new Error(`unbalanced quote in: ${line}`);
      word = (word ?? '') + line.slice(i + 1, close);
      i = close;
    } else if (c === '\\' && i + 1 < line.length) {
      word = (word ?? '') + line[++i];
    } else if (/\s/.test(c)) end();
    else if (c === '#' && word === undefined) break;
    else if ('|&;<>()'.includes(c)) {
      end();
      const two = line.slice(i, i + 2);
      const op = ['||', '&&', '>>'].includes(two) ? two : c;
      tokens.push({ op });
      i += op.length - 1;
    } else word = (word ?? '') + c;
  }
  end();
  return tokens;
}

/** Words that may precede the program of a command line: a yaml key or dash, cron fields, assignments, wrappers and their numbers. */
const BEFORE_PROGRAM = /^(?:-|[A-Za-z_-]+:|[*\d][\d*/,-]*|[A-Za-z_][A-Za-z0-9_]*=.*|timeout|sudo|exec|time)$/;

const PREFIX: Record<string, string[]> = { smart: [], 'smart-push': ['push'], 'smart-pull': ['pull'], 'smart-cache': ['cache'] };

/**
 * The smart command lines of the sh and yaml blocks, as argv after the program name. A command is
 * a simple command whose program is one of the bin names, once what may come before a program is
 * skipped (a yaml key or list dash, cron's time fields, `VAR=value`, `timeout 540`, `sudo`), or the
 * image `smartlayer` of a `docker run` (the image's entrypoint is smart).
 */
function smartCommands(blocks: CodeBlock[]): { where: string; argv: string[] }[] {
  const out: { where: string; argv: string[] }[] = [];
  for (const block of blocks) {
    if (!['sh', 'yaml'].includes(block.lang)) continue;
    const lines = block.lines.join('\n').replace(/\\\n/g, ' ').split('\n');
    lines.forEach((raw, i) => {
      // A GitHub Actions expression is one word to the shell once GitHub has expanded it.
      const line = raw.replace(/\$\{\{[^}]*\}\}/g, 'X');
      const segments: string[][] = [[]];
      for (const t of shellTokens(line)) {
        if ('op' in t) segments.push([]);
        else segments[segments.length - 1]!.push(t.word);
      }
      for (const words of segments) {
        const where = `README.md:${block.line + 1 + i}: ${raw.trim()}`;
        const at = words.findIndex((w) => !BEFORE_PROGRAM.test(w));
        const program = at >= 0 ? words[at]! : '';
        if (program in PREFIX) out.push({ where, argv: [...PREFIX[program]!, ...words.slice(at + 1)] });
        else if (program === 'docker' && words[at + 1] === 'run' && words.includes('smartlayer')) out.push({ where, argv: words.slice(words.indexOf('smartlayer') + 1) });
      }
    });
  }
  return out;
}

/** What the commander program hands a command's action: its path and positional arguments. Throws what commander throws. */
async function viaCommander(argv: string[]): Promise<{ command: string; args: string[] } | undefined> {
  const program = buildProgram();
  let got: { command: string; args: string[] } | undefined;
  const prepare = (c: Command, names: string[]): void => {
    c.configureOutput({ writeOut: () => undefined, writeErr: () => undefined });
    if (c.commands.length) c.commands.forEach((sub) => prepare(sub, [...names, sub.name()]));
    else {
      c.action(function (this: Command) {
        got = { command: names.join(' '), args: this.args };
      });
    }
  };
  prepare(program, []);
  try {
    await program.parseAsync(['node', 'smart', ...argv]);
  } catch (e) {
    if (e instanceof CommanderError && ['commander.version', 'commander.helpDisplayed', 'commander.help'].includes(e.code)) return undefined;
    throw e;
  }
  return got;
}

/** The image names a parsed command names, with the check each must pass; names holding `$VAR` are left to the shell. */
function checkNames(command: string, args: string[]): void {
  const image = (name: string | undefined) => {
    if (name !== undefined && !name.includes('$')) parseImageName(name);
  };
  const store = (name: string | undefined) => {
    if (name === undefined || name.includes('$') || /^docker:\/\/[^/]+\/?$/.test(name)) return;
    expect(['file', 's3']).toContain(parseImageName(name).transport);
  };
  if (command === 'push' || command === 'pull') args.forEach(image);
  else if (command === 'cache lint') return;
  else if (command.startsWith('cache ')) {
    store(args[0]);
    // `cache pull STORE DEST` (no context): the CLI takes an image name in the context's place.
    if (command === 'cache pull') args.slice(1).filter((a) => /^[a-z0-9-]+:/.test(a)).forEach(image);
  }
}

describe('README.md', () => {
  const { blocks, problems } = codeBlocks(README);

  it('has fences that pair up, each block naming its language', () => {
    expect(problems).toEqual([]);
  });

  const commands = smartCommands(blocks);

  it('shows smart commands in its sh and yaml blocks', () => {
    // The extraction itself must not quietly find nothing.
    expect(commands.length).toBeGreaterThan(15);
  });

  it.each(commands.map((c) => [c.where, c.argv] as const))('%s parses with the CLI', async (_where, argv) => {
    const fast = parseTransferArgs(argv);
    const parsed = fast ? { command: fast.mode, args: [fast.source, fast.destination] } : await viaCommander(argv);
    if (parsed) checkNames(parsed.command, parsed.args);
  });
});
