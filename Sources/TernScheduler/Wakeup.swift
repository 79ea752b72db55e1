// The scheduler's wake-up: a one-slot signal that intake, a finished worker
// or a queued DSN raises, and that the pass loop waits on with a timeout (the
// next due time). Signals while nobody waits are kept (one), not counted.

import Synchronization

/// A one-slot wake-up signal with a timeout.
final class Wakeup: Sendable {
    private let state = Mutex<(pending: Bool, waiter: CheckedContinuation<Void, Never>?)>((false, nil))

    func signal() {
        let w = state.withLock { s -> CheckedContinuation<Void, Never>? in
            if let w = s.waiter {
                s.waiter = nil
                return w
            }
            s.pending = true
            return nil
        }
        w?.resume()
    }

    func wait(milliseconds: Int64) async {
        if state.withLock({ s in defer { s.pending = false }; return s.pending }) { return }
        if milliseconds <= 0 || Task.isCancelled { return }
        // A continuation does not see cancellation: the handler wakes it.
        await withTaskCancellationHandler {
            await race(milliseconds)
        } onCancel: {
            self.signal()
        }
    }

    private func race(_ milliseconds: Int64) async {
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                await withCheckedContinuation { cont in
                    let ready = self.state.withLock { s -> Bool in
                        if s.pending { s.pending = false; return true }
                        s.waiter = cont
                        return false
                    }
                    if ready { cont.resume() }
                }
            }
            group.addTask {
                try? await Task.sleep(for: .milliseconds(milliseconds))
                if !Task.isCancelled { self.signal() }
            }
            await group.next()
            group.cancelAll()
        }
        // A timer that fired after the signal leaves a stale wake-up: harmless (one extra pass).
    }
}
