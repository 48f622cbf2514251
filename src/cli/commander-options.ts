/** The declared options (options.ts) as commander options, for the commander program. */
import { InvalidArgumentError, Option, type Command } from 'commander';
import { COMMON_OPTIONS, collect, type OptionSpec } from './options.js';

/** A value parser that throws an Error, as commander's: a bad value is its usage error. */
export function commanderParser<T>(parse: (value: string) => T): (value: string) => T {
  return (value) => {
    try {
      return parse(value);
    } catch (e) {
      throw new InvalidArgumentError((e as Error).message);
    }
  };
}

function toOption(spec: OptionSpec): Option {
  const option = new Option(spec.flags, spec.description);
  if (spec.choices) option.choices(spec.choices);
  if (spec.parse) option.argParser(commanderParser(spec.parse));
  if (spec.repeatable) option.argParser(collect).default([]);
  if (spec.default !== undefined) option.default(spec.default);
  return option;
}

export function addOptions(cmd: Command, specs: readonly OptionSpec[]): Command {
  for (const spec of specs) cmd.addOption(toOption(spec));
  return cmd;
}

export function addCommonOptions(cmd: Command): Command {
  return addOptions(cmd, COMMON_OPTIONS);
}
