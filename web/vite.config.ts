/// <reference types="vitest/config" />
import { defineConfig } from 'vite';

// The built demo is embedded into the stowage binary and served at `/`,
// so asset URLs are relative and file names depend on content only.
export default defineConfig({
  base: './',
  esbuild: { jsx: 'automatic' },
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    sourcemap: false,
    target: 'es2020',
  },
  // `npm run dev` proxies the API to a local `stowage serve` on its default address.
  server: {
    proxy: {
      '/api': 'http://127.0.0.1:3001',
      '/s/': 'http://127.0.0.1:3001',
    },
  },
  test: {
    environment: 'jsdom',
    setupFiles: ['./tests/setup.ts'],
    include: ['tests/**/*.test.{ts,tsx}'],
    css: false,
  },
});
