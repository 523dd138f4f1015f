// A simulated device's side of pairing (BIND-1): it enters pairing mode (SoftAP or BLE) with a fresh
// provisioning key pair, receives the app's encrypted payload, decrypts it, "joins" the Wi-Fi network
// and activates with the platform by presenting the binding token over the device API
// (POST /v1/device-api/bind, authenticated as the device). Used by the demo and the tests.
import {
  generateProvisioningKeyPair,
  openProvisioningPayload,
  type ProvisioningKeyPair,
  type ProvisioningPayload,
  ProvisioningError,
} from './provisioning-payload.ts';

export type PairingMode = 'softap' | 'ble';

/** What the device shows while in pairing mode (the SoftAP page or a BLE characteristic). */
export interface PairingAdvertisement {
  readonly deviceId: string;
  readonly mode: PairingMode;
  /** The device's provisioning public key (uncompressed P-256, base64url); fresh per session. */
  readonly publicKey: string;
  /** SoftAP network name / BLE local name the app looks for. */
  readonly name: string;
}

export interface DeviceBindResult {
  readonly boundAt: number;
  readonly alreadyBound: boolean;
}

/**
 * How the device reaches the platform's device API; DeviceHttpClient satisfies it through
 * `deviceApiActivator`, tests may pass their own.
 */
export interface ProvisioningActivator {
  bind(platformUrl: string, bindingToken: string): Promise<DeviceBindResult>;
  /** Reports a factory reset (POST /v1/device-api/reset): the platform clears the binding (BIND-5). */
  reportReset?(platformUrl: string): Promise<{ unbound: boolean }>;
}

export interface DeviceProvisioningSimulatorOptions {
  deviceId: string;
  activator: ProvisioningActivator;
}

export class DeviceProvisioningSimulator {
  readonly deviceId: string;
  readonly #activator: ProvisioningActivator;
  #keyPair: ProvisioningKeyPair | null = null;
  #mode: PairingMode | null = null;
  #network: ProvisioningPayload | null = null;

  constructor(options: DeviceProvisioningSimulatorOptions) {
    this.deviceId = options.deviceId;
    this.#activator = options.activator;
  }

  /** True between enterPairingMode() and a payload that authenticates. */
  get pairing(): boolean {
    return this.#keyPair !== null;
  }

  /** The network the device joined, without the Wi-Fi passphrase; null before provisioning. */
  get network(): { ssid: string; region: string; platformUrl: string } | null {
    const n = this.#network;
    return n ? { ssid: n.ssid, region: n.region, platformUrl: n.platformUrl } : null;
  }

  /** Starts a pairing session: a new key pair (the previous session's payloads no longer open). */
  enterPairingMode(mode: PairingMode = 'softap'): PairingAdvertisement {
    this.#keyPair = generateProvisioningKeyPair();
    this.#mode = mode;
    const suffix = this.deviceId.slice(-6).toUpperCase();
    return {
      deviceId: this.deviceId,
      mode,
      publicKey: this.#keyPair.publicKey,
      name: mode === 'softap' ? `Castellan-${suffix}` : `CSTL-${suffix}`,
    };
  }

  /**
   * Receives the app's envelope: decrypts it with this session's key. A payload that does not
   * authenticate is refused and pairing continues; one that does ends the session (the key pair is
   * dropped, so a replayed envelope fails).
   */
  receive(envelope: Uint8Array): ProvisioningPayload {
    if (!this.#keyPair)
      throw new ProvisioningError('ERR_PROVISIONING_NOT_PAIRING', 'the device is not in pairing mode');
    const payload = openProvisioningPayload(this.deviceId, this.#keyPair, envelope);
    this.#keyPair = null;
    this.#mode = null;
    this.#network = payload;
    return payload;
  }

  /** Activates with the platform using the received binding token (the token is forgotten after use). */
  async activate(): Promise<DeviceBindResult> {
    const network = this.#network;
    if (!network) throw new ProvisioningError('ERR_PROVISIONING_NOT_PAIRING', 'no provisioning payload received');
    const token = network.bindingToken;
    // The token is single use: drop it whatever the answer, keep the network settings.
    this.#network = { ...network, bindingToken: '' };
    if (token === '') throw new ProvisioningError('ERR_PROVISIONING_NOT_PAIRING', 'the binding token was already used');
    return this.#activator.bind(network.platformUrl, token);
  }

  /** receive() then activate(): what a device does after the app's SoftAP/BLE write. */
  async provision(envelope: Uint8Array): Promise<DeviceBindResult> {
    this.receive(envelope);
    return this.activate();
  }

  /** A factory reset: forgets the network and tells the platform, which clears the binding. */
  async factoryReset(platformUrl?: string): Promise<{ unbound: boolean }> {
    const url = platformUrl ?? this.#network?.platformUrl;
    this.#network = null;
    this.#keyPair = null;
    this.#mode = null;
    if (!url || !this.#activator.reportReset) return { unbound: false };
    return this.#activator.reportReset(url);
  }

  /** The pairing mode in progress, if any. */
  get mode(): PairingMode | null {
    return this.#mode;
  }
}
