// The Authenticator the listener uses: accounts from the store, PBKDF2
// verification on a small thread pool of its own (it is slow on purpose and
// must not stall an event loop or the cooperative pool), the failed-login
// throttle, and an event row for each failure. Passwords are never logged
// and never stored in an event.

import Logging
import NIOPosix
import TernProtocol
import TernMetrics
import TernStore

public final class AccountAuthenticator: Authenticator {
    let store: Store
    public let throttle: AuthThrottle
    let pool: NIOThreadPool
    let clock: @Sendable () -> Int64
    let sleep: @Sendable (Int64) async -> Void
    let logger: Logger

    /// `clock` gives Unix milliseconds; `sleep` holds a failure's reply for
    /// the throttle's delay (both injected for tests).
    public init(store: Store, throttle: AuthThrottle = AuthThrottle(), threads: Int = 2,
                logger: Logger = Logger(label: "tern.auth"),
                clock: @escaping @Sendable () -> Int64 = { nowMillis() },
                sleep: @escaping @Sendable (Int64) async -> Void = { ms in try? await Task.sleep(for: .milliseconds(ms)) }) {
        self.store = store
        self.throttle = throttle
        self.pool = NIOThreadPool(numberOfThreads: threads)
        self.pool.start()
        self.clock = clock
        self.sleep = sleep
        self.logger = logger
    }

    public func shutdown() async {
        try? await pool.shutdownGracefully()
    }

    public func authenticate(_ credentials: Credentials, mechanism: SASLMechanism, client: ClientInfo) async -> AuthOutcome {
        // Failures count per client network (an IPv6 /64 by default): a
        // host that rotates through its /64 is still one client.
        let key = client.network
        let peer = client.addressText
        let user = credentials.username.escapingControlCharacters() // for logs and events only
        if throttle.checkBlocked(key, now: clock()) {
            logger.warning("authentication refused: too many failures", metadata: ["peer": "\(peer)", "user": "\(user)"])
            await event(.authBlocked, peer: peer, user: user, mechanism: mechanism, failures: throttle.failures(key, now: clock()))
            return .throttled
        }
        let store = self.store
        let password = credentials.password
        let result: Account??
        do {
            result = try await pool.runIfActive { () -> Account?? in
                let account = try store.account(named: credentials.username)
                // An unknown name costs the same as a wrong password.
                let ok = PasswordHasher.verify(password, against: account?.passwordHash ?? PasswordHasher.decoy)
                return ok ? .some(account) : .some(nil)
            }
        } catch {
            logger.error("authentication unavailable", metadata: ["error": "\(error)"])
            return .unavailable
        }
        if case .some(.some(let account)) = result {
            throttle.recordSuccess(key)
            logger.info("authenticated", metadata: ["peer": "\(peer)", "user": "\(account.name)", "mechanism": "\(mechanism.rawValue)"])
            return .success(AuthIdentity(name: account.name, allowedSenders: account.senders))
        }
        let (failures, delay) = throttle.recordFailure(key, now: clock())
        TernMetrics.authFailed()
        logger.notice("authentication failed", metadata: [
            "peer": "\(peer)", "user": "\(user)", "mechanism": "\(mechanism.rawValue)", "failures": "\(failures)",
        ])
        await event(.authFailed, peer: peer, user: user, mechanism: mechanism, failures: failures)
        await sleep(delay)
        return .failure
    }

    private func event(_ kind: EventKind, peer: String, user: String, mechanism: SASLMechanism, failures: Int) async {
        let detail = JSON.object([
            ("client", .string(peer)), ("user", .string(user)), ("mechanism", .string(mechanism.rawValue)),
            ("failures", .int(failures)),
        ])
        do {
            try await store.recordEvent(kind: kind, detail: detail, at: clock())
        } catch {
            logger.warning("cannot record \(kind) event", metadata: ["error": "\(error)"])
        }
    }
}
