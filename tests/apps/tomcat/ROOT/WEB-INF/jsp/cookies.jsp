<%@ page contentType="application/json" trimDirectiveWhitespaces="true" %>
<%!
  static String json(String s) {
    StringBuilder b = new StringBuilder("\"");
    for (char c : s.toCharArray()) {
      if (c == '"' || c == '\\') b.append('\\').append(c);
      else if (c < 0x20 || c > 0x7e) b.append(String.format("\\u%04x", (int) c));
      else b.append(c);
    }
    return b.append('"').toString();
  }
%>
<%
  // The cookies as Tomcat parsed them; of repeated names the first one is shown.
  java.util.Map<String, String> seen = new java.util.LinkedHashMap<>();
  jakarta.servlet.http.Cookie[] cookies = request.getCookies();
  if (cookies != null) for (jakarta.servlet.http.Cookie c : cookies) seen.putIfAbsent(c.getName(), c.getValue());
  StringBuilder b = new StringBuilder("{");
  for (java.util.Map.Entry<String, String> e : seen.entrySet()) {
    if (b.length() > 1) b.append(", ");
    b.append(json(e.getKey())).append(": ").append(json(e.getValue()));
  }
  out.print(b.append("}"));
%>
