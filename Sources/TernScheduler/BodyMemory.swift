// The delivery side's budget of message bodies held in memory. A worker
// reads a message's body back from the store when it sends it (and the next
// one's, to start it in the same write): with thousands of outbound
// connections and messages up to the size limit, nothing else bounds what
// they hold together (4,000 connections × 2 × 25 MB). So a body is read only
// once its bytes fit the budget; a worker whose body does not fit waits,
// first come first served, until others' sends free enough. One body larger
// than the whole budget is still read when nothing else is held, so no
// message is stuck. The listener's `limits.message_memory` is the same bound
// on the intake side; mail handed over at intake is bounded by
// `readyBytes` before a worker takes it.

import Synchronization
import TernMetrics

/// Bytes of message bodies delivery workers hold, against a limit.
public final class BodyMemory: Sendable {
    public let limit: Int

    private struct Waiter {
        let id: Int
        let bytes: Int
        let continuation: CheckedContinuation<Bool, Never>
    }

    private struct State {
        var inUse = 0
        var waiters: [Waiter] = []
        var nextID = 0
        /// Reservations that had to wait (for tests and `tern` metrics).
        var waits = 0
        var peak = 0
    }

    private let state = Mutex(State())

    public init(limit: Int) { self.limit = max(1, limit) }

    /// Bytes held now.
    public var inUse: Int { state.withLock { $0.inUse } }
    /// The most held at once.
    public var peak: Int { state.withLock { $0.peak } }
    /// Reservations that waited for room.
    public var waits: Int { state.withLock { $0.waits } }
    /// Workers waiting for room now.
    public var waiting: Int { state.withLock { $0.waiters.count } }

    private static func fits(_ bytes: Int, _ s: State, limit: Int) -> Bool {
        s.inUse == 0 || s.inUse + bytes <= limit
    }

    private static func take(_ bytes: Int, _ s: inout State) {
        s.inUse += bytes
        s.peak = max(s.peak, s.inUse)
        TernMetrics.deliveryBodyMemory(bytes: s.inUse) // under the lock: the gauge's values in order
    }

    /// Takes `bytes` if they fit now and nobody is waiting before; false otherwise.
    public func tryReserve(_ bytes: Int) -> Bool {
        state.withLock { s in
            guard s.waiters.isEmpty, Self.fits(bytes, s, limit: limit) else { return false }
            Self.take(bytes, &s)
            return true
        }
    }

    /// Takes `bytes`, waiting behind earlier waiters until they fit; false
    /// when the task was cancelled first (nothing is then held).
    public func reserve(_ bytes: Int) async -> Bool {
        if tryReserve(bytes) { return true }
        let id = state.withLock { s -> Int in
            s.nextID += 1
            return s.nextID
        }
        return await withTaskCancellationHandler {
            await withCheckedContinuation { (c: CheckedContinuation<Bool, Never>) in
                let now = state.withLock { s -> Bool? in
                    if Task.isCancelled { return false }
                    if s.waiters.isEmpty, Self.fits(bytes, s, limit: limit) {
                        Self.take(bytes, &s)
                        return true
                    }
                    s.waits += 1
                    TernMetrics.deliveryBodyMemoryWait()
                    s.waiters.append(Waiter(id: id, bytes: bytes, continuation: c))
                    return nil
                }
                if let now { c.resume(returning: now) }
            }
        } onCancel: {
            let c = state.withLock { s -> CheckedContinuation<Bool, Never>? in
                guard let i = s.waiters.firstIndex(where: { $0.id == id }) else { return nil }
                return s.waiters.remove(at: i).continuation
            }
            c?.resume(returning: false)
            // The waiter that left may have been first in line: the next may fit now.
            release(0)
        }
    }

    /// Gives `bytes` back and lets in the waiters that fit now, in order.
    public func release(_ bytes: Int) {
        let granted = state.withLock { s -> [CheckedContinuation<Bool, Never>] in
            s.inUse -= bytes
            precondition(s.inUse >= 0, "body memory released more than it held")
            TernMetrics.deliveryBodyMemory(bytes: s.inUse)
            var granted: [CheckedContinuation<Bool, Never>] = []
            while let first = s.waiters.first, Self.fits(first.bytes, s, limit: limit) {
                s.waiters.removeFirst()
                Self.take(first.bytes, &s)
                granted.append(first.continuation)
            }
            return granted
        }
        for c in granted { c.resume(returning: true) }
    }
}
