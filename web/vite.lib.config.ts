import fs from 'node:fs';
import { defineConfig, type Plugin } from 'vite';

// The npm package (`npm run build:lib` → dist-lib/): the components and the
// client as one ES module, their declarations (tsc, tsconfig.lib.json), the
// stylesheet and the OpenAPI document the client's types were generated
// from. React, ReactDOM and tus-js-client stay imports, so the host app's
// copies are used (one React, tus-js-client deduplicated).
const shipAsIs = (files: Record<string, string>): Plugin => ({
  name: 'stowage-ship-as-is',
  generateBundle() {
    for (const [fileName, from] of Object.entries(files)) {
      this.emitFile({ type: 'asset', fileName, source: fs.readFileSync(from) });
    }
  },
});

export default defineConfig({
  esbuild: { jsx: 'automatic' },
  publicDir: false,
  plugins: [shipAsIs({ 'stowage.css': 'src/lib/stowage.css', 'openapi.json': 'src/lib/openapi.json' })],
  build: {
    outDir: 'dist-lib',
    emptyOutDir: true,
    sourcemap: true,
    minify: false,
    target: 'es2020',
    lib: {
      entry: 'src/lib/index.ts',
      formats: ['es'],
      fileName: () => 'index.js',
    },
    rollupOptions: {
      external: [/^react(\/.*)?$/, /^react-dom(\/.*)?$/, /^tus-js-client(\/.*)?$/],
    },
  },
});
