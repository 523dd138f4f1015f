export {
  checkDigests,
  comparePosture,
  type GoldenValues,
  isPostQuantumGroup,
  parsePostureReport,
  type PostureDeviation,
  type PostureReport,
  type PostureTls,
  SECURITY_LEVELS,
  type SecurityLevel,
} from './posture-report.ts';
export { postureRoutes, type PostureRoutesOptions } from './posture-routes.ts';
export {
  type DevicePosture,
  type FirmwareGolden,
  type PostureListFilter,
  PostureService,
  type PostureServiceOptions,
} from './posture-service.ts';
