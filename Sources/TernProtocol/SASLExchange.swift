// One AUTH exchange (RFC 4954 §4) for PLAIN (RFC 4616) or LOGIN, as a pure
// machine the server session delegates to: it takes the client's base64
// responses and says what to answer — another 334 challenge, credentials
// to check, or the reply that ends the exchange.

struct SASLExchange: Sendable {
    enum Step: Equatable, Sendable { case plain, loginUser, loginPassword(String) }

    enum Outcome: Sendable {
        /// Send this 334 and read the next response.
        case challenge(SMTPReply)
        /// Check these credentials.
        case credentials(Credentials, SASLMechanism)
        /// The exchange is over with this error reply.
        case failed(SMTPReply)
    }

    private var step: Step

    private init(_ step: Step) { self.step = step }

    /// Starts `mechanism`, with the initial response when the AUTH line had one.
    static func start(_ mechanism: SASLMechanism, initial: Substring?) -> (SASLExchange, Outcome) {
        switch mechanism {
        case .plain:
            var exchange = SASLExchange(.plain)
            if let initial {
                let outcome = exchange.respond(initial) // before the copy is returned
                return (exchange, outcome)
            }
            return (exchange, .challenge(SMTPReply(334, nil, "")))
        case .login:
            var exchange = SASLExchange(.loginUser)
            if let initial { // the user name as initial response
                let outcome = exchange.respond(initial) // before the copy is returned
                return (exchange, outcome)
            }
            return (exchange, .challenge(SMTPReply(334, nil, "VXNlcm5hbWU6"))) // "Username:"
        }
    }

    /// The client's next response line.
    mutating func respond(_ text: Substring) -> Outcome {
        if text == "*" { return .failed(SMTPReply(501, .securityError, "Authentication cancelled")) }
        // RFC 4954 §4: "=" is an empty initial response.
        guard let bytes = text == "=" ? [] : Base64.decode(text) else {
            return .failed(SMTPReply(501, .syntaxError, "Cannot decode base64 response"))
        }
        switch step {
        case .plain:
            switch SASL.decodePlain(bytes) {
            case .success(let credentials):
                return .credentials(credentials, .plain)
            case .failure(.authzidNotPermitted):
                return .failed(SMTPReply(535, .badCredentials, "Authentication credentials invalid (authorization identity not permitted)"))
            case .failure:
                return .failed(SMTPReply(501, .syntaxError, "Malformed PLAIN response"))
            }
        case .loginUser:
            guard case .success(let user) = SASL.decodeLoginField(bytes) else {
                return .failed(SMTPReply(501, .syntaxError, "Malformed LOGIN user name"))
            }
            step = .loginPassword(user)
            return .challenge(SMTPReply(334, nil, "UGFzc3dvcmQ6")) // "Password:"
        case .loginPassword(let user):
            guard case .success(let password) = SASL.decodeLoginField(bytes) else {
                return .failed(SMTPReply(501, .syntaxError, "Malformed LOGIN password"))
            }
            return .credentials(Credentials(username: user, password: password), .login)
        }
    }
}
