// Device posture (DEV-10, S 6.1.5e, S 8.1.4p): vendors set golden values per product and firmware
// version; devices report their posture on the events topic; the platform keeps the latest report per
// device, compares it, and on a deviation raises a guard alert (which also counts toward the device's
// risk score, IDS-2), records an audit entry and emits a `posture.deviation` change (push, webhooks).
// The same findings reported again do not alert again; a device back in line emits `posture.compliant`.
// The TLS parameters a device reports (CHAN-8) are stored with the posture, so vendors can list the
// devices of a product not yet on a post-quantum key exchange.
import type { Kysely, Selectable } from 'kysely';
import { HYBRID_TLS_GROUPS } from '../../lib/tls-groups.ts';
import type { Logger } from 'pino';
import type { AuditEvent } from '../../audit/index.ts';
import { type ConnectedDevice, type DeviceChannelHandler, PublishRefusedError } from '../../gateway/index.ts';
import type { GuardService } from '../../guard/index.ts';
import type { Database } from '../../store/index.ts';
import type { DeviceEvents } from '../device-events.ts';
import {
  comparePosture,
  type GoldenValues,
  parsePostureReport,
  type PostureDeviation,
  type PostureReport,
  type PostureTls,
  SECURITY_LEVELS,
  type SecurityLevel,
  TLS_VERSIONS,
} from './posture-report.ts';

export interface FirmwareGolden extends GoldenValues {
  readonly productId: string;
  readonly vendorId: string;
  readonly firmwareVersion: string;
  readonly updatedAt: number;
}

export interface DevicePosture {
  readonly deviceId: string;
  readonly vendorId: string;
  readonly productId: string;
  readonly reported: PostureReport;
  readonly reportedAt: number;
  readonly checkedAt: number;
  readonly deviations: readonly PostureDeviation[];
  readonly compliant: boolean;
}

/** Which postures of a product to list (CHAN-8): all, by exact group, or by post-quantum or not. */
export interface PostureListFilter {
  limit: number;
  /** Device IDs after this one (paging, ordered by device ID). */
  after?: string;
  /** Only reports whose TLS group is exactly this. */
  tlsGroup?: string;
  /** true: a hybrid ML-KEM group; false: a classical group or no `tls` reported. */
  postQuantum?: boolean;
}

export interface PostureServiceOptions {
  db: Kysely<Database>;
  /** Alerts are recorded through the guard (stored, audited, counted, pushed to its alert webhook). */
  guard: Pick<GuardService, 'detect'>;
  record: (event: AuditEvent) => void;
  events: DeviceEvents;
  log: Logger;
  now?: () => number;
}

const asLevel = (value: string | null | undefined): SecurityLevel | null =>
  (SECURITY_LEVELS as readonly string[]).includes(value ?? '') ? (value as SecurityLevel) : null;

function toGolden(row: Selectable<Database['product_firmware_golden']>): FirmwareGolden {
  return {
    productId: row.product_id,
    vendorId: row.vendor_id,
    firmwareVersion: row.firmware_version,
    securityLevel: asLevel(row.security_level) ?? 'L1',
    digests: JSON.parse(row.digests) as Record<string, string>,
    updatedAt: row.updated_at,
  };
}

function toTls(row: Selectable<Database['device_posture']>): PostureTls | null {
  if (row.tls_group === null || row.tls_version === null || row.tls_cipher === null) return null;
  const version = (TLS_VERSIONS as readonly string[]).includes(row.tls_version)
    ? (row.tls_version as PostureTls['version'])
    : null;
  return version ? { group: row.tls_group, version, cipher: row.tls_cipher } : null;
}

function toPosture(row: Selectable<Database['device_posture']>): DevicePosture {
  const tls = toTls(row);
  return {
    deviceId: row.device_id,
    vendorId: row.vendor_id,
    productId: row.product_id,
    reported: {
      firmwareVersion: row.firmware_version,
      securityLevel: asLevel(row.security_level) ?? 'L1',
      digests: JSON.parse(row.digests) as Record<string, string>,
      ...(tls ? { tls } : {}),
    },
    reportedAt: row.reported_at,
    checkedAt: row.checked_at,
    deviations: JSON.parse(row.deviations) as PostureDeviation[],
    compliant: row.compliant === 1,
  };
}

export class PostureService {
  readonly #db: Kysely<Database>;
  readonly #guard: Pick<GuardService, 'detect'>;
  readonly #record: (event: AuditEvent) => void;
  readonly #events: DeviceEvents;
  readonly #log: Logger;
  readonly #now: () => number;

  constructor(options: PostureServiceOptions) {
    this.#db = options.db;
    this.#guard = options.guard;
    this.#record = options.record;
    this.#events = options.events;
    this.#log = options.log;
    this.#now = options.now ?? Date.now;
  }

  /**
   * The events-channel handler: posture reports are checked before the QoS 1 acknowledgement; a
   * malformed one is refused (PUBACK 0x99 Payload format invalid), other events pass untouched.
   */
  readonly channelHandler: DeviceChannelHandler = async (device, message) => {
    if (message.rest.length > 0) return;
    const parsed = parsePostureReport(message.payload);
    if (parsed === null) return;
    if (!parsed.ok) throw new PublishRefusedError('payload-invalid', parsed.reason);
    try {
      await this.check(device, parsed.report, message.receivedAt);
    } catch (error) {
      this.#log.error({ err: error, deviceId: device.id }, 'posture: report could not be checked');
      throw new PublishRefusedError('unavailable', 'posture report could not be stored');
    }
  };

  async setGolden(
    productId: string,
    vendorId: string,
    firmwareVersion: string,
    values: GoldenValues,
  ): Promise<FirmwareGolden> {
    const row = {
      product_id: productId,
      vendor_id: vendorId,
      firmware_version: firmwareVersion,
      security_level: values.securityLevel,
      digests: JSON.stringify(values.digests),
      updated_at: this.#now(),
    };
    await this.#db
      .insertInto('product_firmware_golden')
      .values(row)
      .onConflict((oc) =>
        oc.columns(['product_id', 'firmware_version']).doUpdateSet({
          security_level: row.security_level,
          digests: row.digests,
          updated_at: row.updated_at,
        }),
      )
      .execute();
    return toGolden(row);
  }

  async getGolden(productId: string, firmwareVersion: string): Promise<FirmwareGolden | null> {
    const row = await this.#db
      .selectFrom('product_firmware_golden')
      .selectAll()
      .where('product_id', '=', productId)
      .where('firmware_version', '=', firmwareVersion)
      .executeTakeFirst();
    return row ? toGolden(row) : null;
  }

  async listGolden(productId: string): Promise<FirmwareGolden[]> {
    const rows = await this.#db
      .selectFrom('product_firmware_golden')
      .selectAll()
      .where('product_id', '=', productId)
      .orderBy('firmware_version')
      .execute();
    return rows.map(toGolden);
  }

  async deleteGolden(productId: string, firmwareVersion: string): Promise<boolean> {
    const result = await this.#db
      .deleteFrom('product_firmware_golden')
      .where('product_id', '=', productId)
      .where('firmware_version', '=', firmwareVersion)
      .executeTakeFirst();
    return Number(result.numDeletedRows) > 0;
  }

  async getPosture(deviceId: string): Promise<DevicePosture | null> {
    const row = await this.#db
      .selectFrom('device_posture')
      .selectAll()
      .where('device_id', '=', deviceId)
      .executeTakeFirst();
    return row ? toPosture(row) : null;
  }

  /** The latest postures of a product's devices, ordered by device ID. */
  async listPostures(productId: string, filter: PostureListFilter): Promise<DevicePosture[]> {
    let query = this.#db
      .selectFrom('device_posture')
      .selectAll()
      .where('product_id', '=', productId)
      .orderBy('device_id')
      .limit(filter.limit);
    if (filter.after !== undefined) query = query.where('device_id', '>', filter.after);
    if (filter.tlsGroup !== undefined) query = query.where('tls_group', '=', filter.tlsGroup);
    if (filter.postQuantum === true) query = query.where('tls_group', 'in', [...HYBRID_TLS_GROUPS]);
    if (filter.postQuantum === false) {
      query = query.where((eb) =>
        eb.or([eb('tls_group', 'is', null), eb('tls_group', 'not in', [...HYBRID_TLS_GROUPS])]),
      );
    }
    return (await query.execute()).map(toPosture);
  }

  /** Stores a device's report, compares it, and alerts on new deviations. */
  async check(device: ConnectedDevice, report: PostureReport, receivedAt: number): Promise<DevicePosture> {
    const golden = await this.getGolden(device.productId, report.firmwareVersion);
    const product = await this.#db
      .selectFrom('products')
      .select(['security_level'])
      .where('id', '=', device.productId)
      .executeTakeFirst();
    const deviations = comparePosture(report, golden, asLevel(product?.security_level));
    const previous = await this.getPosture(device.id);
    const now = this.#now();
    const changes = {
      vendor_id: device.vendorId,
      product_id: device.productId,
      firmware_version: report.firmwareVersion,
      security_level: report.securityLevel,
      digests: JSON.stringify(report.digests),
      // Replaced with every report: a report without `tls` clears what an earlier one said.
      tls_group: report.tls?.group ?? null,
      tls_version: report.tls?.version ?? null,
      tls_cipher: report.tls?.cipher ?? null,
      reported_at: receivedAt,
      checked_at: now,
      deviations: JSON.stringify(deviations),
      compliant: deviations.length === 0 ? 1 : 0,
    };
    const row = { device_id: device.id, ...changes };
    await this.#db
      .insertInto('device_posture')
      .values(row)
      .onConflict((oc) => oc.column('device_id').doUpdateSet(changes))
      .execute();
    const posture = toPosture(row);
    const sameFindings =
      previous !== null &&
      previous.reported.firmwareVersion === report.firmwareVersion &&
      JSON.stringify(previous.deviations) === row.deviations;
    if (deviations.length > 0 && !sameFindings) {
      await this.#raise(device, report, deviations, now);
    } else if (deviations.length === 0 && previous !== null && !previous.compliant) {
      this.#record({
        actor: { type: 'device', id: device.id },
        tenant: device.vendorId,
        type: 'device.posture-compliant',
        target: device.id,
        result: 'success',
        details: { firmwareVersion: report.firmwareVersion, securityLevel: report.securityLevel },
      });
      this.#events.emit('change', {
        deviceId: device.id,
        vendorId: device.vendorId,
        kind: 'posture.compliant',
        at: now,
        data: { firmwareVersion: report.firmwareVersion, securityLevel: report.securityLevel },
      });
    }
    return posture;
  }

  async #raise(
    device: ConnectedDevice,
    report: PostureReport,
    deviations: readonly PostureDeviation[],
    at: number,
  ): Promise<void> {
    const findings = { firmwareVersion: report.firmwareVersion, securityLevel: report.securityLevel, deviations };
    const alert = await this.#guard.detect('posture-deviation', {
      target: device.id,
      tenant: device.vendorId,
      ip: null,
      details: { ...findings, deviations: [...deviations] },
    });
    this.#record({
      actor: { type: 'device', id: device.id },
      tenant: device.vendorId,
      type: 'device.posture-deviation',
      target: device.id,
      result: 'failure',
      details: { alertId: alert.id, ...findings, deviations: [...deviations] },
    });
    this.#events.emit('change', {
      deviceId: device.id,
      vendorId: device.vendorId,
      kind: 'posture.deviation',
      at,
      data: { alertId: alert.id, ...findings, deviations: [...deviations] },
    });
  }
}
