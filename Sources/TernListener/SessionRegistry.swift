// The open SMTP sessions, so that shutdown can reach each one on its event loop.

import NIOConcurrencyHelpers
import NIOCore

final class SessionRegistry: Sendable {
    private struct Entry: @unchecked Sendable {
        // Touched only on `loop`, through NIOLoopBound-like discipline.
        let handler: SMTPServerHandler
        let loop: EventLoop
    }

    private let entries = NIOLockedValueBox<[ObjectIdentifier: Entry]>([:])

    func add(_ handler: SMTPServerHandler, eventLoop: EventLoop) {
        entries.withLockedValue { $0[ObjectIdentifier(handler)] = Entry(handler: handler, loop: eventLoop) }
    }

    func remove(_ handler: SMTPServerHandler) {
        _ = entries.withLockedValue { $0.removeValue(forKey: ObjectIdentifier(handler)) }
    }

    var count: Int { entries.withLockedValue { $0.count } }

    /// Asks every session to finish (on its own event loop).
    func beginShutdown() {
        for e in entries.withLockedValue({ Array($0.values) }) {
            e.loop.execute { e.handler.beginShutdown() }
        }
    }

    func forceCloseAll() {
        for e in entries.withLockedValue({ Array($0.values) }) {
            e.loop.execute { e.handler.forceClose() }
        }
    }
}
