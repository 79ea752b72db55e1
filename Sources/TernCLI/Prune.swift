// `tern prune`: retention. Bodies of messages whose recipients are all
// final go after `retention.bodies` days; whole messages (with recipients,
// attempts and events) after `retention.history` days. A message with a
// recipient still to deliver is never touched. `tern serve` runs the same
// sweep periodically.

import ArgumentParser
import Foundation
import TernStore

struct Prune: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Delete old message bodies and old history now (tern serve also does it periodically), then reclaim space.",
        discussion: "Defaults come from [retention] in the configuration (7 and 90 days). Messages that still have a recipient to deliver are never touched.")

    @OptionGroup var common: DatabaseOptions
    @Option(help: "Drop bodies of finished messages older than this many days.") var bodies: Int?
    @Option(help: "Drop finished messages and their history older than this many days.") var history: Int?
    @Flag(help: "Only count what would go.") var dryRun = false

    func run() async throws {
        let (store, settings) = try openExisting(common)
        defer { store.close() }
        var policy = settings.retention
        if let b = bodies { policy.bodyDays = b }
        if let h = history { policy.historyDays = h }
        guard policy.bodyDays >= 0, policy.historyDays >= 0 else { throw fail("days must be 0 or more", code: 64) }
        do {
            let r = try await store.prune(policy, now: nowMillis(), dryRun: dryRun)
            print("\(dryRun ? "would prune" : "pruned"): \(r.bodies) bodies, \(r.messages) messages, \(r.events) events; \(r.freedPages) pages freed")
        } catch {
            throw fail("\(error)", code: 74)
        }
    }
}
