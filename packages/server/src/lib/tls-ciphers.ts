// TLS cipher policy shared by every listener (MQTT, HTTPS, admin): a leaf module, so the HTTP layer need
// not load the gateway to learn it.

/**
 * TLS 1.2 suites with forward secrecy and AEAD only (CHAN-1); TLS 1.3 suites are all AEAD. ECDSA first:
 * the development PKI and the lightweight device profile use P-256 keys.
 */
export const AEAD_CIPHERS = [
  'TLS_AES_128_GCM_SHA256',
  'TLS_AES_256_GCM_SHA384',
  'TLS_CHACHA20_POLY1305_SHA256',
  'ECDHE-ECDSA-AES128-GCM-SHA256',
  'ECDHE-ECDSA-AES256-GCM-SHA384',
  'ECDHE-ECDSA-CHACHA20-POLY1305',
  'ECDHE-RSA-AES128-GCM-SHA256',
  'ECDHE-RSA-AES256-GCM-SHA384',
  'ECDHE-RSA-CHACHA20-POLY1305',
].join(':');

/**
 * The lightweight profile (CHAN-2) for small chips: one suite per TLS version, both AES-128-GCM (the
 * hardware AES most MCUs have) and, for TLS 1.2, ECDSA authentication (a P-256 certificate).
 */
export const LITE_CIPHERS = ['TLS_AES_128_GCM_SHA256', 'ECDHE-ECDSA-AES128-GCM-SHA256'].join(':');
