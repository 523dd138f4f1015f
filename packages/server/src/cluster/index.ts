// Scale mode (RES-2): several processes, on one machine or many, over one PostgreSQL and one Redis.
export { type BusChannel, type BusMessage, ClusterBus, type ClusterBusOptions } from './cluster-bus.ts';
export { ClusterNodes, type ClusterNodesOptions, newNodeId } from './cluster-nodes.ts';
export { ClusterRouting, type RoutedBroker } from './cluster-routing.ts';
export { type BridgedEvents, bridgeDeviceEvents } from './device-events-bridge.ts';
export { SharedTicketKeys, type SharedTicketKeysOptions } from './shared-ticket-keys.ts';
export { announceReady, isClusterWorker, type PrimaryOptions, runPrimary, type WorkerReady } from './worker-cluster.ts';
