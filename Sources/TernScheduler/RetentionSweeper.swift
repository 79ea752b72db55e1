// The periodic retention sweep of `tern serve` (the same work as `tern prune`).

import Logging
import ServiceLifecycle
import TernStore

public final class RetentionSweeper: Service, Sendable {
    let store: Store
    let policy: RetentionPolicy
    let intervalMillis: Int64
    let clock: any TernClock
    let logger: Logger

    public init(store: Store, policy: RetentionPolicy, intervalSeconds: Int64, clock: any TernClock = SystemClock(),
                logger: Logger = Logger(label: "tern.retention")) {
        self.store = store
        self.policy = policy
        self.intervalMillis = intervalSeconds * 1000
        self.clock = clock
        self.logger = logger
    }

    /// One sweep; errors are logged, and the next sweep tries again.
    @discardableResult
    public func sweep() async -> PruneResult? {
        do {
            let r = try await store.prune(policy, now: clock.now())
            if r != PruneResult() {
                logger.info("retention sweep", metadata: [
                    "bodies": "\(r.bodies)", "messages": "\(r.messages)", "events": "\(r.events)", "freed_pages": "\(r.freedPages)",
                ])
            }
            return r
        } catch {
            logger.error("retention sweep failed", metadata: ["error": "\(error)"])
            return nil
        }
    }

    public func run() async throws {
        guard intervalMillis > 0 else { try? await gracefulShutdown(); return }
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                await self.sweep()
                try? await Task.sleep(for: .milliseconds(self.intervalMillis))
            }
        }
    }
}
