export {
  checkDigests,
  comparePosture,
  type GoldenValues,
  parsePostureReport,
  type PostureDeviation,
  type PostureReport,
  SECURITY_LEVELS,
  type SecurityLevel,
} from './posture-report.ts';
export { postureRoutes, type PostureRoutesOptions } from './posture-routes.ts';
export {
  type DevicePosture,
  type FirmwareGolden,
  PostureService,
  type PostureServiceOptions,
} from './posture-service.ts';
