import { StrictMode } from 'react';
import { createRoot } from 'react-dom/client';
import './lib/stowage.css';
import './demo/demo.css';
import { App } from './demo/App';

const root = document.getElementById('root');
if (root) {
  createRoot(root).render(
    <StrictMode>
      <App />
    </StrictMode>,
  );
}
