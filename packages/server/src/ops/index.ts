export { type AdminServer, createMetrics, isLoopback, type MetricSources, startAdminServer } from './admin-server.ts';
