#!/usr/bin/env node
// Validates src/lib/openapi.json (the server's description) as OpenAPI 3.1
// with Redocly's structural rules and link checks, so what clients are
// generated from is a valid document, its `links` included.
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { createConfig, lint } from '@redocly/openapi-core';

const file = process.argv[2] ?? path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../src/lib/openapi.json');
const config = await createConfig({
  rules: {
    struct: 'error',
    'no-unresolved-refs': 'error',
    'operation-operationId-unique': 'error',
    'operation-operationId-url-safe': 'error',
    'path-parameters-defined': 'error',
    'no-identical-paths': 'error',
    'no-enum-type-mismatch': 'error',
    'no-invalid-schema-examples': 'error',
  },
});
const problems = await lint({ ref: file, config });
for (const p of problems) {
  const where = p.location?.[0]?.pointer ?? '';
  console.error(`${p.severity} ${p.ruleId} ${where}: ${p.message}`);
}
const errors = problems.filter((p) => p.severity === 'error').length;
if (errors) {
  console.error(`${path.basename(file)}: ${errors} error(s)`);
  process.exit(1);
}
console.log(`${path.basename(file)}: valid OpenAPI ${problems.length ? `(${problems.length} warnings)` : ''}`.trim());
