<%@ page contentType="text/plain; charset=UTF-8" trimDirectiveWhitespaces="true" %>
<%
  java.util.Map<String, String> USERS = java.util.Map.of("alice", "wonderland", "mallory", "evil");
  if ("GET".equals(request.getMethod()) || "HEAD".equals(request.getMethod())) {
    response.setContentType("text/html; charset=UTF-8");
    out.print("<!doctype html><title>Log in</title><form method=\"post\" action=\""
        + response.encodeURL("/login") + "\"><input name=\"username\"> <input name=\"password\""
        + " type=\"password\"> <button>Log in</button></form>");
    return;
  }
  String name = request.getParameter("username"), password = request.getParameter("password");
  if (name != null && password != null && password.equals(USERS.get(name))) {
    session.setAttribute("user", name); // no request.changeSessionId(): the fixation flaw
    response.sendRedirect(response.encodeRedirectURL("/account"));
    return;
  }
  out.print("Invalid credentials\n");
%>
