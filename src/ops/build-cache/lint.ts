/** `smart cache lint`: advice that makes a Dockerfile's builds cache well. */
import { readDockerfile } from './steps.js';

export async function lint(dockerfile: string, contextDir: string) {
  const { parseDockerfile } = await import('../../dockerfile/parser.js');
  const { lintBuild } = await import('../../dockerfile/lint.js');
  const text = await readDockerfile(dockerfile);
  const advice = await lintBuild(parseDockerfile(text, dockerfile), contextDir, { dockerfilePath: dockerfile });
  return { advice: [...advice], contextSizes: advice.contextSizes };
}
