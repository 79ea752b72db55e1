// Blocklist monitoring of Tern's own sources (issue 19): each source
// address is looked up in each DNSBL zone (the address reversed under the
// zone, RFC 5782: an A record in 127.0.0.0/8 means listed, its TXT the
// reason), and each source's EHLO domain in each domain zone. A lookup that
// fails (time-out, SERVFAIL) or that the list answers with its error codes
// (127.255.255.x: "query refused", e.g. Spamhaus through a public resolver)
// changes nothing. Each change of status is an event; with
// `on_listed = "pause"` a listed source leaves rotation and comes back once
// no list names it. The last answers live in `blocklist_status`, which
// `tern blocklist check` writes too: a running server takes its holds from
// that table, whoever did the check.

import Foundation
import Logging
import ServiceLifecycle
import TernDelivery
import TernProtocol
import TernRouting
import TernStore

public struct BlocklistConfig: Sendable, Equatable {
    /// DNSBL zones queried with each source's address.
    public var zones: [String] = BlocklistConfig.wellKnownIPZones.map(\.zone)
    /// Domain zones queried with each source's EHLO domain.
    public var domainZones: [String] = []
    public var intervalMillis: Int64 = 3_600_000
    public var onListed = OnListed.alert

    public enum OnListed: String, Sendable, CaseIterable {
        /// Take the source out of its pools while listed.
        case pause
        /// Events and log lines only.
        case alert
    }

    public init() {}

    /// Zones operators commonly monitor, with what to know about each
    /// (docs/warmup.md lists them with their usage terms).
    public static let wellKnownIPZones: [(zone: String, note: String)] = [
        ("zen.spamhaus.org", "free for low-volume use; refuses queries through public resolvers (answers 127.255.255.254)"),
        ("bl.spamcop.net", "free"),
        ("b.barracudacentral.org", "needs a free registration of the querying resolver's address"),
        ("psbl.surriel.com", "free"),
        ("bl.mailspike.net", "free for low volume"),
    ]
    public static let wellKnownDomainZones: [(zone: String, note: String)] = [
        ("dbl.spamhaus.org", "as zen.spamhaus.org"),
        ("multi.surbl.org", "free for low volume; refuses some public resolvers"),
    ]
}

/// One source's answer from one zone.
public struct BlocklistResult: Sendable, Equatable {
    public enum Status: Sendable, Equatable {
        case listed(code: String, reason: String?)
        case clear
        /// No answer worth acting on: the status stays as it was.
        case failed(String)
    }
    public var source: String
    public var zone: String
    /// The address or domain looked up.
    public var query: String
    public var status: Status
}

public final class BlocklistMonitor: Service {
    let config: BlocklistConfig
    let sources: SourceBook
    let dns: any AuthDNS
    let store: Store
    let clock: any TernClock
    let logger: Logger
    /// A source's EHLO name → the domain a domain list is asked about.
    let domainOf: @Sendable (String) -> String

    public init(config: BlocklistConfig, sources: SourceBook, dns: any AuthDNS, store: Store, clock: any TernClock = SystemClock(),
                domainOf: @escaping @Sendable (String) -> String = { $0 }, logger: Logger = Logger(label: "tern.blocklist")) {
        self.config = config
        self.sources = sources
        self.dns = dns
        self.store = store
        self.clock = clock
        self.domainOf = domainOf
        self.logger = logger
    }

    /// The name an address is looked up by in `zone` (RFC 5782 §2.1, §2.4:
    /// IPv4 octets reversed; IPv6 nibbles reversed).
    public static func queryName(_ address: IPAddress, zone: String) -> String {
        if address.isIPv4 { return address.bytes.reversed().map(String.init).joined(separator: ".") + "." + zone }
        let hex = Array("0123456789abcdef")
        let nibbles = address.bytes.flatMap { [hex[Int($0 >> 4)], hex[Int($0 & 0xF)]] }
        return nibbles.reversed().map(String.init).joined(separator: ".") + "." + zone
    }

    /// Looks every source (or one) up in every zone now.
    public func lookUp(source only: String? = nil) async -> [BlocklistResult] {
        var results: [BlocklistResult] = []
        for source in sources.sources where only == nil || source.name == only {
            for zone in config.zones {
                let name = BlocklistMonitor.queryName(source.address, zone: zone)
                results.append(BlocklistResult(source: source.name, zone: zone, query: source.address.description,
                                               status: await ask(name)))
            }
            if let ehlo = source.ehlo {
                let domain = domainOf(ehlo)
                for zone in config.domainZones {
                    results.append(BlocklistResult(source: source.name, zone: zone, query: domain, status: await ask(domain + "." + zone)))
                }
            }
        }
        return results
    }

    private func ask(_ name: String) async -> BlocklistResult.Status {
        switch await dns.ipv4(name) {
        case .nxdomain, .noRecords: return .clear
        case .temporaryFailure(let why): return .failed(why)
        case .records(let addresses):
            let codes = addresses.filter { $0.bytes.first == 127 }
            // 127.255.255.x: the list's own errors (refused, over quota), not a listing.
            if codes.isEmpty || codes.allSatisfy({ $0.bytes[1] == 255 && $0.bytes[2] == 255 }) {
                return .failed("the list answered \(addresses.map(\.description).joined(separator: ", ")) (an error code, or not in 127.0.0.0/8)")
            }
            let code = codes.map(\.description).sorted().joined(separator: ",")
            var reason: String? = nil
            if case .records(let texts) = await dns.txt(name) { reason = texts.first }
            return .listed(code: code, reason: reason)
        }
    }

    /// Looks up, writes what changed with its events, and applies the holds.
    @discardableResult
    public func check(source: String? = nil) async throws -> [BlocklistResult] {
        let results = await lookUp(source: source)
        try await record(results)
        return results
    }

    /// Writes the answers (a failed lookup writes nothing) and an event per
    /// change of status; then takes the holds from the table.
    public func record(_ results: [BlocklistResult]) async throws {
        let now = clock.now()
        let before = Dictionary(uniqueKeysWithValues: try store.blocklistStatuses().map { ("\($0.source) \($0.zone) \($0.query)", $0) })
        var rows: [StoredBlocklistStatus] = []
        var events: [(kind: EventKind, at: Int64, detail: String)] = []
        for r in results {
            let listed: Bool, code: String?, reason: String?
            switch r.status {
            case .failed(let why):
                logger.info("blocklist lookup failed; status unchanged", metadata: ["source": "\(r.source)", "zone": "\(r.zone)", "error": "\(why)"])
                continue
            case .clear: (listed, code, reason) = (false, nil, nil)
            case .listed(let c, let t): (listed, code, reason) = (true, c, t)
            }
            let old = before["\(r.source) \(r.zone) \(r.query)"]
            let changed = (old?.listed ?? false) != listed
            rows.append(StoredBlocklistStatus(source: r.source, zone: r.zone, query: r.query, listed: listed, code: code, reason: reason,
                                              checkedAt: now, changedAt: changed || old == nil ? now : old!.changedAt))
            guard changed else { continue }
            var json = JSONObjectWriter()
            json.add("source", r.source)
            json.add("query", r.query)
            json.add("zone", r.zone)
            json.add("code", code ?? old?.code)
            json.add("reason", reason ?? old?.reason)
            events.append((listed ? .blocklistListed : .blocklistDelisted, now, json.finish()))
            let meta: Logger.Metadata = ["source": "\(r.source)", "query": "\(r.query)", "zone": "\(r.zone)", "code": "\(code ?? "-")",
                                         "reason": "\(reason ?? "-")"]
            if listed { logger.error("source listed on a blocklist", metadata: meta) } else { logger.notice("source delisted", metadata: meta) }
        }
        if !rows.isEmpty { try await store.saveBlocklist(rows, events: events) }
        try applyHolds()
    }

    /// With `on_listed = "pause"`: each source some list names leaves
    /// rotation; the others come back.
    public func applyHolds() throws {
        guard config.onListed == .pause else { return }
        let listed = Dictionary(grouping: try store.blocklistStatuses().filter(\.listed), by: \.source)
        let known = Set(config.zones + config.domainZones)
        for source in sources.sources {
            let zones = (listed[source.name] ?? []).filter { known.contains($0.zone) }
            if let first = zones.first {
                if sources.hold(source.name, .blocklist, reason: "listed on \(zones.map(\.zone).joined(separator: ", "))") {
                    logger.warning("source out of rotation while listed", metadata: ["source": "\(source.name)", "zone": "\(first.zone)"])
                }
            } else if sources.release(source.name, .blocklist) {
                logger.notice("source back in rotation: no list names it", metadata: ["source": "\(source.name)"])
            }
        }
    }

    // MARK: - Service

    /// Checks at start and every interval; in between, every 30 s, takes
    /// the holds from the table (a `tern blocklist check` may have written it).
    public func run() async throws {
        guard !sources.isEmpty, !(config.zones.isEmpty && config.domainZones.isEmpty) else {
            // Nothing to watch; a service that returned would end the group.
            try? await gracefulShutdown()
            return
        }
        // A graceful shutdown ends the wait (and a check in progress) at once.
        try? await cancelWhenGracefulShutdown {
            var last: Int64 = .min / 2
            while !Task.isCancelled {
                let now = self.clock.now()
                do {
                    if now - last >= self.config.intervalMillis {
                        last = now
                        try await self.check()
                    } else {
                        try self.applyHolds()
                    }
                } catch {
                    self.logger.error("blocklist check failed", metadata: ["error": "\(error)"])
                }
                try await Task.sleep(for: .milliseconds(min(self.config.intervalMillis, 30_000)))
            }
        }
    }
}
