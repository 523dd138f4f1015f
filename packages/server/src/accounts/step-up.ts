// Step-up (ACC-6, the standard's 8.2.2 m-n): sensitive operations (credential change, sharing access,
// remote unlock, account deletion) demand an authentication at most accounts.stepUpMinutes old. A
// person renews it with POST /v1/auth/reauthenticate (password, TOTP or passkey), which rotates the
// session token.
import { CastellanError } from '../errors/index.ts';
import type { AccountsContext } from './accounts-context.ts';
import type { Principal } from './principal.ts';

export function requireRecentAuthentication(principal: Principal, ctx: Pick<AccountsContext, 'config' | 'now'>): void {
  if (principal.kind !== 'user') return;
  if (ctx.now() - principal.authenticatedAt > ctx.config.stepUpMinutes * 60_000) {
    throw new CastellanError('ERR_AUTH_STEP_UP_REQUIRED');
  }
}
