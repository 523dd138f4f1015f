export {
  type AddressCheck,
  type AddressLists,
  clientNetworkOf,
  createAddressFilter,
  filterConnections,
  normaliseIp,
} from './address-filter.ts';
export {
  type Alert,
  type DetectionKind,
  type GuardConfig,
  type GuardDependencies,
  GuardService,
} from './guard-service.ts';
export { guardHttp, guardRoutes } from './guard-routes.ts';
export { IpBlocks } from './ip-blocks.ts';
export { type LimitOutcome, RateLimits } from './rate-limits.ts';
