// Time for the scheduler, injected (as the network and DNS are): the server uses the
// wall clock, tests a manual one they advance.

import Synchronization
import TernStore

public protocol TernClock: Sendable {
    /// Unix milliseconds.
    func now() -> Int64
}

public struct SystemClock: TernClock {
    public init() {}
    public func now() -> Int64 { nowMillis() }
}

public final class ManualClock: TernClock {
    private let time: Atomic<Int64>
    public init(_ start: Int64 = 1_800_000_000_000) { time = Atomic(start) }
    public func now() -> Int64 { time.load(ordering: .relaxed) }
    public func advance(ms: Int64) { time.add(ms, ordering: .relaxed) }
    public func advance(seconds: Int64) { advance(ms: seconds * 1000) }
}
