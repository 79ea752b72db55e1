// The read and admin API (issue 20): the CLI's operations over HTTP, JSON
// in and out. The operations themselves are the CLI's (`AdminOperations`,
// implemented by TernCLI with the same store functions and JSON forms as
// `tern queue`, `tern history`, `tern stats` and `tern suppress`): this file
// only maps requests to them. Lists are paginated with `limit` and
// `offset`; a page says the next offset, or null at the end.

import Foundation
import Hummingbird
import TernStore

/// A refusal of an operation: status, message, and the parameter at fault.
public struct APIFailure: Error, Sendable {
    public var status: Int
    public var message: String
    public var field: String?

    public init(_ status: Int, _ message: String, field: String? = nil) {
        self.status = status
        self.message = message
        self.field = field
    }
}

/// One page of a list: the items (a JSON array's text) and how many.
public struct APIPage: Sendable {
    public var json: String
    public var count: Int

    public init(json: String, count: Int) {
        self.json = json
        self.count = count
    }
}

public enum QueueAction: String, Sendable, CaseIterable {
    case hold, release, flush, delete, bounce
}

/// What the CLI can do, for the API. Times are the CLI's `--since` forms.
public protocol AdminOperations: Sendable {
    func queueList(state: RecipientState?, domain: String?, limit: Int, offset: Int) throws -> APIPage
    /// nil: no such message.
    func queueShow(queueID: String) throws -> String?
    /// The CLI's `--format json` result object.
    func queueAction(_ action: QueueAction, _ selector: QueueSelector) async throws -> String
    func history(_ filter: HistoryFilter, since: String?, until: String?) throws -> APIPage
    func statsRoutes(since: String?, until: String?, limit: Int) throws -> String
    func statsQueue(limit: Int) throws -> String
    func statsRecipients(since: String?, until: String?, top: Int) throws -> String
    func suppressionList(search: String?, limit: Int, offset: Int) throws -> APIPage
    func suppressionAdd(_ addresses: [String], reason: String, expires: String?) async throws -> String
    /// How many of them were on the list.
    func suppressionRemove(_ addresses: [String]) async throws -> Int
}

extension HTTPServer {
    static let maxPage = 1000

    func addAdminRoutes(to router: Router<TernRequestContext>) {
        // Reading: scope read.
        router.get("/api/v1/queue") { request, _ in
            try await self.run(request, needs: .read) { ops, q in
                let state = try q.state("state")
                return .page(try ops.queueList(state: state, domain: q["domain"], limit: try q.limit(), offset: try q.offset()), q)
            }
        }
        router.get("/api/v1/queue/:id") { request, context in
            let id = context.parameters.get("id") ?? ""
            return try await self.run(request, needs: .read) { ops, _ in
                guard let detail = try ops.queueShow(queueID: id) else { throw APIFailure(404, "no message with queue id \(id)", field: "id") }
                return .object(detail)
            }
        }
        router.post("/api/v1/queue/actions/:action") { request, context in
            let name = context.parameters.get("action") ?? ""
            return try await self.run(request, needs: .admin) { ops, _ in
                guard let action = QueueAction(rawValue: name) else {
                    throw APIFailure(404, "no queue action \(name) (\(QueueAction.allCases.map(\.rawValue).joined(separator: ", ")))")
                }
                let body = try await HTTPServer.jsonObject(request)
                let selector: QueueSelector
                switch (body["queue_id"] as? String, body["domain"] as? String, body["all"] as? Bool) {
                case (let q?, nil, nil): selector = .queueID(q)
                case (nil, let d?, nil): selector = .domain(d)
                case (nil, nil, true?) where action == .flush: selector = .all
                case (nil, nil, _):
                    throw APIFailure(400, "name a queue_id or a domain" + (action == .flush ? " (or all: true)" : ""), field: "queue_id")
                default: throw APIFailure(400, "give one of queue_id, domain" + (action == .flush ? ", all" : ""), field: "queue_id")
                }
                return .object(try await ops.queueAction(action, selector))
            }
        }
        router.get("/api/v1/history") { request, _ in
            try await self.run(request, needs: .read) { ops, q in
                var f = HistoryFilter()
                f.recipient = q["recipient"]
                f.sender = q["sender"]
                f.domain = q["domain"]
                f.queueID = q["queue_id"]
                f.headerMessageID = q["message_id"] // with or without <>: the operation takes them off, as the CLI does
                f.state = try q.state("state")
                f.limit = try q.limit()
                f.offset = try q.offset()
                return .page(try ops.history(f, since: q["since"], until: q["until"]), q)
            }
        }
        router.get("/api/v1/stats/routes") { request, _ in
            try await self.run(request, needs: .read) { ops, q in
                .object(try ops.statsRoutes(since: q["since"], until: q["until"], limit: try q.limit(default: 50)))
            }
        }
        router.get("/api/v1/stats/queue") { request, _ in
            try await self.run(request, needs: .read) { ops, q in .object(try ops.statsQueue(limit: try q.limit(default: 50))) }
        }
        router.get("/api/v1/stats/recipients") { request, _ in
            try await self.run(request, needs: .read) { ops, q in
                .object(try ops.statsRecipients(since: q["since"], until: q["until"], top: try q.limit("top", default: 20)))
            }
        }
        router.get("/api/v1/suppressions") { request, _ in
            try await self.run(request, needs: .read) { ops, q in
                .page(try ops.suppressionList(search: q["search"], limit: try q.limit(), offset: try q.offset()), q)
            }
        }
        router.post("/api/v1/suppressions") { request, _ in
            try await self.run(request, needs: .admin) { ops, _ in
                let body = try await HTTPServer.jsonObject(request)
                guard let addresses = body["addresses"] as? [String], !addresses.isEmpty else {
                    throw APIFailure(400, "an array of one or more addresses is required", field: "addresses")
                }
                if let r = body["reason"], !(r is String) { throw APIFailure(400, "must be a string", field: "reason") }
                if let e = body["expires"], !(e is String) { throw APIFailure(400, "must be a string such as 30d", field: "expires") }
                return .object(try await ops.suppressionAdd(addresses, reason: body["reason"] as? String ?? "added through the API",
                                                            expires: body["expires"] as? String))
            }
        }
        router.delete("/api/v1/suppressions/:address") { request, context in
            let address = context.parameters.get("address").flatMap { $0.removingPercentEncoding } ?? ""
            return try await self.run(request, needs: .admin) { ops, _ in
                let removed = try await ops.suppressionRemove([address])
                guard removed > 0 else { throw APIFailure(404, "\(address) is not on the suppression list", field: "address") }
                return .object(JSON.object([("removed", .int(removed))]).text)
            }
        }
    }

    enum Answer {
        case object(String)
        case page(APIPage, Query)
    }

    /// Authorizes, runs the operation, and writes its answer or failure as JSON.
    func run(_ request: Request, needs: APIScope, _ body: (any AdminOperations, Query) async throws -> Answer) async throws -> Response {
        if case .refused(let r) = authorize(request, needs: needs, json: true) { return r }
        guard let ops = api.operations else { return HTTPServer.error(.serviceUnavailable, "the admin API is not available in this process") }
        do {
            switch try await body(ops, Query(request.uri.queryParameters)) {
            case .object(let text):
                return HTTPServer.text(text.hasSuffix("\n") ? text : text + "\n", contentType: "application/json")
            case .page(let page, let q):
                let limit = try q.limit(), offset = try q.offset()
                let next = page.count == limit ? String(offset + limit) : "null"
                return HTTPServer.text("{\"items\":\(page.json.trimmingCharacters(in: .whitespacesAndNewlines)),\"count\":\(page.count),"
                    + "\"offset\":\(offset),\"next_offset\":\(next)}\n", contentType: "application/json")
            }
        } catch let f as APIFailure {
            return HTTPServer.error(HTTPResponse.Status(code: f.status), f.message, field: f.field)
        } catch let e as StoreError {
            logger.error("API operation failed", metadata: ["error": "\(e)"])
            if case .full = e { return HTTPServer.error(.serviceUnavailable, "the queue's disk is full", headers: [.retryAfter: "60"]) }
            return HTTPServer.error(.internalServerError, "the database could not do this: \(e)")
        } catch {
            logger.error("API operation failed", metadata: ["error": "\(error)"])
            return HTTPServer.error(.internalServerError, "\(error)")
        }
    }

    /// The request's body as a JSON object (at most 1 MiB).
    static func jsonObject(_ request: Request) async throws -> [String: Any] {
        var request = request
        let buffer: ByteBuffer
        do { buffer = try await request.collectBody(upTo: 1 << 20) } catch { throw APIFailure(413, "the body is larger than 1 MiB") }
        if buffer.readableBytes == 0 { return [:] }
        guard let o = try? JSONSerialization.jsonObject(with: Data(buffer.readableBytesView)) as? [String: Any] else {
            throw APIFailure(400, "the body must be a JSON object")
        }
        return o
    }

    /// A request's query parameters, checked.
    struct Query {
        let parameters: [String: String]

        init(_ p: Hummingbird.Parameters) {
            var d: [String: String] = [:]
            for (k, v) in p { d[String(k)] = String(v) }
            parameters = d
        }

        subscript(_ name: String) -> String? { parameters[name].flatMap { $0.isEmpty ? nil : $0 } }

        func limit(_ name: String = "limit", default value: Int = 100) throws -> Int {
            guard let text = self[name] else { return value }
            guard let n = Int(text), (1...HTTPServer.maxPage).contains(n) else {
                throw APIFailure(400, "must be a whole number from 1 to \(HTTPServer.maxPage)", field: name)
            }
            return n
        }

        func offset() throws -> Int {
            guard let text = self["offset"] else { return 0 }
            guard let n = Int(text), n >= 0 else { throw APIFailure(400, "must be a whole number, 0 or more", field: "offset") }
            return n
        }

        func state(_ name: String) throws -> RecipientState? {
            guard let text = self[name] else { return nil }
            guard let s = RecipientState(rawValue: text) else {
                throw APIFailure(400, "not a state (\(RecipientState.allCases.map(\.rawValue).joined(separator: ", ")))", field: name)
            }
            return s
        }
    }
}
