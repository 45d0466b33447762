// Type declarations for wsroom.js, the client for wsroom's wire protocol, version 1.

/** The version of wsroom.js. */
export declare const VERSION: string;

/** Subprotocols offered by default, preferred first. */
export declare const SUBPROTOCOLS: readonly ["wsroom.v1.batch", "wsroom.v1"];

/** Codes of the `error` frames a server sends. */
export type ServerErrorCode =
  | "invalid_json"
  | "invalid_message"
  | "unknown_type"
  | "not_joined"
  | "forbidden"
  | "room_full"
  | "user_offline"
  | "rate_limited"
  | "internal_error";

/** Codes of the errors wsroom.js raises itself. */
export type ClientErrorCode = "timeout" | "disconnected" | "queue_full" | "closed" | "refused";

export type ErrorCode = ServerErrorCode | ClientErrorCode;

export declare const SERVER_ERROR_CODES: readonly ServerErrorCode[];
export declare const CLIENT_ERROR_CODES: readonly ClientErrorCode[];

/** Any JSON value. */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** A user id as the server authenticated it; `null` for anonymous connections and the server. */
export type UserId = string | null;

export type ClientState = "connecting" | "open" | "reconnecting" | "closed";
export type RoomState = "joining" | "joined" | "leaving" | "left";

/** An error from the server's `error` frame, or from wsroom.js itself. */
export declare class WsroomError extends Error {
  constructor(
    code: ErrorCode,
    message: string,
    details?: { ref?: string | number | null; room?: string | null; status?: number | null; closeCode?: number | null },
  );
  readonly name: "WsroomError";
  readonly code: ErrorCode;
  /** The `ref` of the frame that failed, when there was one. */
  readonly ref: string | number | null;
  /** The room the failed request was about, when there was one. */
  readonly room: string | null;
  /** The HTTP status of a refused handshake (401, 403), when known. */
  readonly status: number | null;
  /** The close code that ended the connection, when that is what failed. */
  readonly closeCode: number | null;
}

/** A message in a room, as the server stored and broadcast it. */
export interface RoomMessage<D = Json> {
  readonly type: "message";
  readonly room: string;
  /** Strictly increasing per room (within one epoch). */
  readonly id: number;
  readonly from: UserId;
  readonly data: D;
  /** Unix time in milliseconds, from the server's clock. */
  readonly ts: number;
  /** `true` when it came from the history of a re-join rather than live. */
  readonly replayed?: boolean;
}

/** A direct message to this client's user. */
export interface DirectMessage<D = Json> {
  readonly type: "direct";
  readonly id: number;
  readonly from: UserId;
  readonly data: D;
  readonly ts: number;
}

/** A frame of an application-defined type (`broadcast_event`, `send_event`, `send_all`). */
export interface ApplicationEvent<D = Json> {
  readonly type: string;
  readonly room?: string;
  readonly data: D;
}

/** The answer to a `message`, `direct`, custom frame or `ping`. */
export interface Ack<D = Json> {
  readonly type: "ack" | "pong";
  readonly ref: string | number;
  /** The stored message's id (`message`), the direct message's id (`direct`). */
  readonly id?: number;
  /** What the server's handler for a custom type returned, when it returned something. */
  readonly data?: D;
}

export interface Welcome {
  readonly type: "welcome";
  readonly connection: string;
  readonly user: UserId;
  readonly protocol: number;
  readonly heartbeat: number | null;
}

/** What the `state` event carries besides the new state. */
export interface StateInfo {
  /** The close code of the connection that ended ("reconnecting", "closed"). */
  readonly code?: number;
  readonly reason?: string;
  readonly wasClean?: boolean;
  /** The HTTP status of a refused handshake, when known. */
  readonly status?: number | null;
  /** Milliseconds until the next attempt ("reconnecting"). */
  readonly delay?: number;
  /** How many attempts have failed in a row ("reconnecting"). */
  readonly attempt?: number;
  /** Why the client closed for good ("closed"); `null` when `close()` was called. */
  readonly error?: WsroomError | null;
  /** The authenticated user and the connection id ("open"). */
  readonly user?: UserId;
  readonly connection?: string | null;
}

export interface CloseInfo {
  readonly code: number;
  readonly reason: string;
  readonly wasClean: boolean;
}

export interface ConnectOptions {
  /**
   * Query parameters added to the URL on every attempt. A function is called before each
   * attempt (it may return a promise), so a token can be refreshed.
   */
  params?: Record<string, string | number | boolean | null | undefined> | (() => Record<string, string | number | boolean | null | undefined> | Promise<Record<string, string | number | boolean | null | undefined>>);
  /** Subprotocols to offer; default `SUBPROTOCOLS`. */
  protocols?: readonly string[];
  /**
   * Reconnect after a drop (default `true`: except after close codes 1000 and 1008 and
   * HTTP 401/403). A function decides for each close.
   */
  reconnect?: boolean | ((info: CloseInfo) => boolean);
  /** First backoff step in milliseconds (default 500). */
  minDelay?: number;
  /** Largest backoff step in milliseconds (default 15000). */
  maxDelay?: number;
  /** Milliseconds to wait for an answer (or a join) before rejecting with "timeout" (default 10000). */
  timeout?: number;
  /** Frames sent while disconnected that wait for the connection; beyond, "queue_full" (default 100). */
  maxQueue?: number;
  /** Milliseconds of silence after which a ping checks the connection (default 25000; 0: never). */
  pingInterval?: number;
  /** A WebSocket constructor, for Node.js before 22: `(await import("ws")).WebSocket`. */
  WebSocket?: unknown;
}

type Unsubscribe = () => void;

export interface ClientEvents {
  state: (state: ClientState, info: StateInfo) => void;
  welcome: (frame: Welcome) => void;
  direct: (message: DirectMessage) => void;
  /** Application events that name no room. */
  event: (frame: ApplicationEvent) => void;
  /** `error` frames that answer nothing this client is waiting for. */
  error: (error: WsroomError | Error) => void;
}

export interface RoomEvents {
  message: (message: RoomMessage) => void;
  presence: (presence: { room: string; event: "join" | "leave"; user: string }) => void;
  /** The member list changed (presence, or a re-join). */
  members: (members: readonly string[]) => void;
  /** Messages may have been missed: a re-join did not recover them, or the server sent `gap`. */
  gap: (gap: { room: string; epoch: string | null; offset: number; reason: "not recovered" | "gap" }) => void;
  /** Application events in this room (`Room.broadcast_event` on the server). */
  event: (frame: ApplicationEvent) => void;
  /** The room was left: by `leave()`, or refused on a re-join (`error`), or the client closed. */
  left: (info: { room: string; error: WsroomError | null }) => void;
}

/** Open a connection to a wsroom server; it connects at once and reconnects by itself. */
export declare function connect(url: string | URL, options?: ConnectOptions): Client;

export declare class Client {
  constructor(url: string | URL, options?: ConnectOptions);
  readonly state: ClientState;
  /** The user id the server authenticated; set on each `welcome`. */
  readonly user: UserId;
  /** This connection's id on the server; a new one after each reconnect. */
  readonly connectionId: string | null;
  /** Seconds between frames the server asks for (`null`: none). */
  readonly heartbeat: number | null;
  /** The subprotocol the server selected. */
  readonly protocol: string | null;
  /** The rooms joined or being joined, by name (a copy). */
  readonly rooms: ReadonlyMap<string, Room>;
  room(name: string): Room | undefined;
  on<E extends keyof ClientEvents>(event: E, listener: ClientEvents[E]): Unsubscribe;
  once<E extends keyof ClientEvents>(event: E, listener: ClientEvents[E]): Unsubscribe;
  off<E extends keyof ClientEvents>(event: E, listener: ClientEvents[E]): void;
  /** Resolves once joined; the room is re-joined after every reconnect until `leave()`. */
  join(name: string, options?: { data?: Json }): Promise<Room>;
  /** Send `data` to every connection of user `to`. */
  direct<D = Json>(to: string, data: Json): Promise<Ack<D>>;
  /** Send a frame of an application-defined type. */
  request<D = Json>(type: string, data?: Json, options?: { room?: string }): Promise<Ack<D>>;
  /** Resolves with the round-trip time in milliseconds. */
  ping(): Promise<number>;
  /** Reconnect now instead of waiting for the backoff timer. */
  reconnect(): void;
  /** Close for good: no reconnect; pending requests reject with "closed". */
  close(code?: number, reason?: string): void;
}

export declare class Room {
  readonly name: string;
  readonly state: RoomState;
  /** The users in the room; anonymous connections are not listed. */
  readonly members: readonly string[];
  /** The history the last `joined` brought. */
  readonly history: readonly RoomMessage[];
  /** Whether the last re-join recovered every missed message (`null` after the first join). */
  readonly recovered: boolean | null;
  /** The largest message id seen in this room. */
  readonly offset: number;
  /** The run of the room's ids that `offset` belongs to. */
  readonly epoch: string | null;
  on<E extends keyof RoomEvents>(event: E, listener: RoomEvents[E]): Unsubscribe;
  once<E extends keyof RoomEvents>(event: E, listener: RoomEvents[E]): Unsubscribe;
  off<E extends keyof RoomEvents>(event: E, listener: RoomEvents[E]): void;
  /** Post to the room; resolves with the `ack` (`id` of the stored message). */
  send<D = Json>(data: Json): Promise<Ack<D>>;
  /** Send an application-defined type about this room. */
  request<D = Json>(type: string, data?: Json): Promise<Ack<D>>;
  /** Leave; the room is not re-joined any more. */
  leave(): Promise<void>;
}
