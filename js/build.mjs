// Minifies js/*.js into capi_bridge/static/*.min.js, which hold the code only (what browsers
// download and pages inline), and records in js/built.json the SHA-256 of each source and of
// its build, so a Python test can tell a stale build without needing node.
import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { gzipSync } from 'node:zlib';
import { minify } from 'terser';

const here = new URL('.', import.meta.url);
const out = new URL('../capi_bridge/static/', import.meta.url);
const sha = (data) => createHash('sha256').update(data).digest('hex');
const built = {};

for (const name of ['capi-bridge', 'boot']) {
  const source = readFileSync(new URL(`${name}.js`, here));
  const result = await minify(source.toString('utf8'), {
    ecma: 2015,
    compress: { passes: 3 },
    mangle: true,
    format: { comments: false }
  });
  const code = `${result.code}\n`;
  writeFileSync(new URL(`${name}.min.js`, out), code);
  built[name] = { source: sha(source), build: sha(code) };
  console.log(`${name}.min.js: ${result.code.length} B min, ${gzipSync(code, { level: 9 }).length} B min+gzip`);
}
writeFileSync(new URL('built.json', here), `${JSON.stringify(built, null, 2)}\n`);
