import HTTPTypes
import Hummingbird
import SwitchyardJSON

/// An OpenAI-style error: the status and `{"error": {"message", "type", "param", "code"}}`. Thrown
/// from any route, Hummingbird answers with it.
struct APIError: HTTPResponseError {
    var status: HTTPResponse.Status
    var message: String
    var type = "invalid_request_error"
    var param: String?
    var code: String?
    var retryAfter: Int?

    /// `{"error": {...}}`.
    var body: JSONValue {
        var e = JSONObject()
        e["message"] = .string(message)
        e["type"] = .string(type)
        e["param"] = param.map { .string($0) } ?? .null
        e["code"] = code.map { .string($0) } ?? .null
        return ["error": .object(e)]
    }

    var response: Response {
        var headers: HTTPFields = [.contentType: "application/json"]
        if let retryAfter { headers[HTTPField.Name("Retry-After")!] = String(retryAfter) }
        return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(string: body.serialized())))
    }

    func response(from request: Request, context: some RequestContext) throws -> Response { response }
}

/// Every error the framework answers by itself (no such route, a body too large, a malformed
/// request) in OpenAI's shape too, so clients parse one kind of error body.
struct OpenAIErrorMiddleware<Context: RequestContext>: RouterMiddleware {
    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let error as APIError {
            throw error
        } catch let error as HTTPError {
            let type = error.status.code >= 500 ? "server_error" : "invalid_request_error"
            let message: String
            switch error.status {
            case .notFound: message = "no route \(request.method) \(request.uri.path)"
            case .contentTooLarge: message = "the request body is too large"
            default: message = error.body ?? error.status.reasonPhrase
            }
            throw APIError(status: error.status, message: message, type: type)
        }
    }
}
