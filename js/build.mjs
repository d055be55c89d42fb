// Minifies js/*.js into capi_bridge/static/*.min.js. Each output starts with a comment holding
// the SHA-256 of its source, so a Python test can tell a stale build without needing node.
import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { gzipSync } from 'node:zlib';
import { minify } from 'terser';

const here = new URL('.', import.meta.url);
const out = new URL('../capi_bridge/static/', import.meta.url);

for (const name of ['capi-bridge', 'boot']) {
  const source = readFileSync(new URL(`${name}.js`, here));
  const sha = createHash('sha256').update(source).digest('hex');
  const result = await minify(source.toString('utf8'), {
    ecma: 2015,
    compress: { passes: 3 },
    mangle: true,
    format: { comments: false }
  });
  const code = `/*! capi-bridge ${name}.js sha256:${sha} */\n${result.code}\n`;
  writeFileSync(new URL(`${name}.min.js`, out), code);
  console.log(`${name}.min.js: ${result.code.length} B min, ${gzipSync(result.code, { level: 9 }).length} B min+gzip`);
}
