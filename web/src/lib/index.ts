export * from './api';
export {
  StowageProvider,
  useStowage,
  withStowage,
  DEFAULT_MAX_FILE_SIZE,
  type StowageContextValue,
  type StowageProviderProps,
  type StowageConnectionProps,
} from './context';
export {
  StorageIndicator,
  StorageWarning,
  storageLevel,
  usagePercent,
  remainingBytes,
  WARN_PERCENT,
  CRITICAL_PERCENT,
  type StorageLevel,
  type StorageIndicatorProps,
  type StorageWarningProps,
} from './storage';
export { UploadProgress, formatDuration, type UploadItem, type UploadStatus, type UploadProgressProps } from './UploadProgress';
export { FileUploader, type FileUploaderProps, type UploadProtocol, type UploadTransport } from './FileUploader';
export { FileManager, type FileManagerProps, type ViewMode } from './FileManager';
export { Dialog, type DialogProps } from './Dialog';
