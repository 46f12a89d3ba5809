<%@ page contentType="text/plain; charset=UTF-8" trimDirectiveWhitespaces="true" %>
<%
  if (!"GET".equals(request.getMethod()) && !"HEAD".equals(request.getMethod())) { response.sendError(405); return; }
  String user = (String) session.getAttribute("user");
  if (user == null) { response.setStatus(401); out.print("Not logged in\n"); return; }
  out.print("Account of " + user + "\n");
%>
