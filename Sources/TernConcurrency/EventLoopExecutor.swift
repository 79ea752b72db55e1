// A Swift concurrency task executor that runs jobs on one SwiftNIO event
// loop. Delivery workers prefer it (Task(executorPreference:)): their code
// between awaits, the SMTP client's exchanges on connections of that loop
// and the resumes after replies and commits all happen on the loop's
// thread, instead of hopping to Swift's global pool and back for every
// reply and every commit. The workers do only short work between awaits
// (a suppression or message read by rowid at most), as event-loop code must.

import NIOCore

public final class EventLoopExecutor: TaskExecutor, Sendable {
    public let loop: any EventLoop

    public init(_ loop: any EventLoop) { self.loop = loop }

    public func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        let executor = asUnownedTaskExecutor()
        loop.execute { job.runSynchronously(on: executor) }
    }

    /// One executor per loop of `group`.
    public static func forEachLoop(of group: any EventLoopGroup) -> [EventLoopExecutor] {
        group.makeIterator().map { EventLoopExecutor($0) }
    }
}
